// server/health: the status starts NOT_SERVING (grpc++'s default service starts at
// SERVING, which let a probe see a loading server as ready), follows SetServing,
// names unknown services, streams changes to Watch and ends the streams on Shutdown.
#include "server/health.h"

#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"

namespace leank::server {
namespace {

using grpc::health::v1::Health;
using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

constexpr char kService[] = "leank.v1.LeankService";

class HealthTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(&health_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ASSERT_GT(port, 0);
    stub_ = Health::NewStub(grpc::CreateChannel("127.0.0.1:" + std::to_string(port),
                                                grpc::InsecureChannelCredentials()));
  }
  void TearDown() override {
    health_.Shutdown();
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  }

  // The status, or the call's error code as a negative number.
  int Check(const std::string& service) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    HealthCheckRequest req;
    req.set_service(service);
    HealthCheckResponse resp;
    const grpc::Status s = stub_->Check(&ctx, req, &resp);
    return s.ok() ? resp.status() : -s.error_code();
  }

  HealthService health_{{kService}};
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<Health::Stub> stub_;
};

TEST_F(HealthTest, StartsNotServingAndFollowsSetServing) {
  EXPECT_EQ(Check(""), HealthCheckResponse::NOT_SERVING);
  EXPECT_EQ(Check(kService), HealthCheckResponse::NOT_SERVING);
  health_.SetServing(true);
  EXPECT_EQ(Check(""), HealthCheckResponse::SERVING);
  EXPECT_EQ(Check(kService), HealthCheckResponse::SERVING);
  health_.SetServing(false);
  EXPECT_EQ(Check(""), HealthCheckResponse::NOT_SERVING);
}

TEST_F(HealthTest, UnknownServiceIsNotFound) {
  health_.SetServing(true);
  EXPECT_EQ(Check("no.such.Service"), -grpc::StatusCode::NOT_FOUND);
  grpc::ClientContext ctx;
  HealthCheckRequest req;
  req.set_service("no.such.Service");
  HealthCheckResponse resp;
  EXPECT_EQ(stub_->Check(&ctx, req, &resp).error_message(), "unknown service 'no.such.Service'");
}

TEST_F(HealthTest, ShutdownIsFinal) {
  health_.SetServing(true);
  health_.Shutdown();
  EXPECT_EQ(Check(""), HealthCheckResponse::NOT_SERVING);
  health_.SetServing(true);
  EXPECT_EQ(Check(""), HealthCheckResponse::NOT_SERVING);
}

TEST_F(HealthTest, WatchStreamsEveryChangeAndEndsOnShutdown) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  HealthCheckRequest req;
  req.set_service(kService);
  std::unique_ptr<grpc::ClientReader<HealthCheckResponse>> reader = stub_->Watch(&ctx, req);
  HealthCheckResponse resp;
  ASSERT_TRUE(reader->Read(&resp));
  EXPECT_EQ(resp.status(), HealthCheckResponse::NOT_SERVING);
  health_.SetServing(true);
  ASSERT_TRUE(reader->Read(&resp));
  EXPECT_EQ(resp.status(), HealthCheckResponse::SERVING);
  health_.SetServing(true);  // no change: nothing sent
  health_.SetServing(false);
  ASSERT_TRUE(reader->Read(&resp));
  EXPECT_EQ(resp.status(), HealthCheckResponse::NOT_SERVING);
  health_.SetServing(true);
  ASSERT_TRUE(reader->Read(&resp));
  EXPECT_EQ(resp.status(), HealthCheckResponse::SERVING);
  health_.Shutdown();
  ASSERT_TRUE(reader->Read(&resp));
  EXPECT_EQ(resp.status(), HealthCheckResponse::NOT_SERVING);
  EXPECT_FALSE(reader->Read(&resp));
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::UNAVAILABLE);
}

TEST_F(HealthTest, WatchOfAnUnknownServiceSaysServiceUnknown) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  HealthCheckRequest req;
  req.set_service("no.such.Service");
  std::unique_ptr<grpc::ClientReader<HealthCheckResponse>> reader = stub_->Watch(&ctx, req);
  HealthCheckResponse resp;
  ASSERT_TRUE(reader->Read(&resp));
  EXPECT_EQ(resp.status(), HealthCheckResponse::SERVICE_UNKNOWN);
}

TEST_F(HealthTest, CancelledWatchReturnsWithoutAChange) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  HealthCheckRequest req;
  std::unique_ptr<grpc::ClientReader<HealthCheckResponse>> reader = stub_->Watch(ctx.get(), req);
  HealthCheckResponse resp;
  ASSERT_TRUE(reader->Read(&resp));
  ctx->TryCancel();
  EXPECT_FALSE(reader->Read(&resp));
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  // Shutdown with no deadline waits for every handler: it returns only if Watch
  // noticed the cancel (before health_.Shutdown, which would also end it).
  server_->Shutdown();
}

}  // namespace
}  // namespace leank::server
