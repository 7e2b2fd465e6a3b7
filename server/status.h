#pragma once
// The one place where absl::Status becomes grpc::Status. The canonical codes are the
// same numbers in both; the message is kept as is (it names the field at fault).

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace leank::server {

grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace leank::server
