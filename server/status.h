#pragma once
// The one place where absl::Status becomes grpc::Status. The canonical codes are the
// same numbers in both; the message is kept as is (it names the field at fault).

#include <string>

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace leank::server {

grpc::Status ToGrpcStatus(const absl::Status& status);

// The code as a metric label: "invalid_argument", "resource_exhausted", ...
std::string StatusCodeLabel(absl::StatusCode code);

}  // namespace leank::server
