#include "tests/e2e/e2e_util.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <thread>

#include "httplib.h"

namespace leank::e2e {

int FreeLoopbackPort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return 0;
  }
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

std::unique_ptr<ServerProcess> ServerProcess::Start(const std::string& binary,
                                                    std::vector<std::string> args,
                                                    const std::string& log_path,
                                                    std::map<std::string, std::string> env) {
  auto p = std::unique_ptr<ServerProcess>(new ServerProcess());
  p->grpc_port_ = FreeLoopbackPort();
  p->http_port_ = FreeLoopbackPort();
  while (p->http_port_ == p->grpc_port_) p->http_port_ = FreeLoopbackPort();
  p->log_path_ = log_path;
  args.insert(args.begin(), binary);
  args.push_back("--host=127.0.0.1");
  args.push_back("--port=" + std::to_string(p->grpc_port_));
  args.push_back("--metrics-port=" + std::to_string(p->http_port_));
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string s = *e;
    // The suite owns the server's configuration: no LEANK_* from the caller's shell.
    if (s.rfind("LEANK_", 0) == 0) continue;
    env_strings.push_back(s);
  }
  for (const auto& [k, v] : env) env_strings.push_back(k + "=" + v);
  std::vector<char*> envp;
  for (std::string& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);

  const pid_t pid = fork();
  if (pid == 0) {
    const int fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
    }
    execve(argv[0], argv.data(), envp.data());
    _exit(127);
  }
  p->pid_ = pid;
  // The server is not listening yet: retry the connection fast instead of gRPC's
  // default 1 s+ exponential backoff.
  grpc::ChannelArguments channel_args;
  channel_args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 50);
  channel_args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 50);
  channel_args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 200);
  p->channel_ =
      grpc::CreateCustomChannel(p->target(), grpc::InsecureChannelCredentials(), channel_args);
  return p;
}

ServerProcess::~ServerProcess() {
  if (Alive()) {
    kill(pid_, SIGKILL);
    WaitExit(std::chrono::seconds(10));
  }
}

std::unique_ptr<v1::LeankService::Stub> ServerProcess::Stub() const {
  return v1::LeankService::NewStub(channel_);
}

std::optional<grpc::health::v1::HealthCheckResponse::ServingStatus> ServerProcess::Health(
    const std::string& service) {
  auto stub = grpc::health::v1::Health::NewStub(channel_);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
  grpc::health::v1::HealthCheckRequest req;
  req.set_service(service);
  grpc::health::v1::HealthCheckResponse resp;
  if (!stub->Check(&ctx, req, &resp).ok()) return std::nullopt;
  return resp.status();
}

namespace {

bool PortAccepts(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  const bool ok = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  close(fd);
  return ok;
}

}  // namespace

bool ServerProcess::Listening() const { return PortAccepts(grpc_port_); }

bool ServerProcess::WaitServing(std::chrono::seconds timeout) {
  const auto until = std::chrono::steady_clock::now() + timeout;
  // Until the port listens, poll with plain TCP: a gRPC channel that failed to
  // connect backs off for seconds before it tries again.
  while (!Listening()) {
    if (!Alive() || std::chrono::steady_clock::now() >= until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  while (std::chrono::steady_clock::now() < until) {
    if (!Alive()) return false;
    if (Health() == grpc::health::v1::HealthCheckResponse::SERVING) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

std::unique_ptr<ServerProcess> ServerProcess::StartServing(
    const std::string& binary, const std::vector<std::string>& args, const std::string& log_path,
    std::chrono::seconds timeout, bool* serving, std::map<std::string, std::string> env) {
  std::unique_ptr<ServerProcess> p;
  for (int attempt = 0; attempt < 3; ++attempt) {
    p = Start(binary, args, log_path, env);
    *serving = p->WaitServing(timeout);
    if (*serving || p->Alive() || p->Log().find("cannot listen") == std::string::npos) break;
  }
  return p;
}

void ServerProcess::Signal(int sig) {
  if (Alive()) kill(pid_, sig);
}

bool ServerProcess::Alive() {
  if (exit_code_.has_value() || pid_ <= 0) return false;
  int status = 0;
  const pid_t r = waitpid(pid_, &status, WNOHANG);
  if (r == 0) return true;
  exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
  return false;
}

std::optional<int> ServerProcess::WaitExit(std::chrono::seconds timeout) {
  const auto until = std::chrono::steady_clock::now() + timeout;
  while (Alive()) {
    if (std::chrono::steady_clock::now() >= until) return std::nullopt;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return exit_code_;
}

std::string ServerProcess::Log() const {
  std::ifstream in(log_path_);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string s = ss.str();
  return s.size() > 8000 ? s.substr(s.size() - 8000) : s;
}

StreamResult Generate(v1::LeankService::Stub& stub, const v1::GenerateRequest& req,
                      std::chrono::milliseconds deadline) {
  StreamResult r;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + deadline);
  auto reader = stub.Generate(&ctx, req);
  v1::GenerateResponse chunk;
  while (reader->Read(&chunk)) {
    r.text += chunk.text();
    r.token_ids.insert(r.token_ids.end(), chunk.token_ids().begin(), chunk.token_ids().end());
    if (chunk.finish_reason() != v1::FINISH_REASON_UNSPECIFIED)
      r.finish_reason = chunk.finish_reason();
    r.chunks.push_back(chunk);
  }
  r.status = reader->Finish();
  return r;
}

std::string HttpGet(int port, const std::string& path, int* status) {
  httplib::Client cli("127.0.0.1", port);
  cli.set_connection_timeout(2);
  cli.set_read_timeout(5);
  auto res = cli.Get(path.c_str());
  if (!res) {
    if (status) *status = -1;
    return "";
  }
  if (status) *status = res->status;
  return res->body;
}

std::optional<double> MetricValue(const std::string& text, const std::string& name,
                                  const std::string& labels) {
  const std::string key = labels.empty() ? name + " " : name + "{" + labels + "} ";
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key, 0) == 0) return std::stod(line.substr(key.size()));
  }
  return std::nullopt;
}

}  // namespace leank::e2e
