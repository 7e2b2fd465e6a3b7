// leank-bench: load tester of a leank-serve gRPC server. See docs/benchmarks.md
// ("Serving") for the flags, the definitions of the metrics and the JSON format.
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <random>

#include "CLI/CLI.hpp"
#include "google/protobuf/util/json_util.h"
#include "nlohmann/json.hpp"
#include "tools/bench/progress_bar.h"
#include "tools/bench/runner.h"
#include "tools/bench/workload.h"
#include "tools/cli/client_common.h"

namespace leank::bench {
namespace {

constexpr int kExitFailedRequests = 1;  // the run finished, some requests failed

std::atomic<bool> g_stop{false};

void OnSigint(int) {
  g_stop = true;
  std::signal(SIGINT, SIG_DFL);  // a second Ctrl-C kills at once
}

struct Flags {
  std::string server = client::kDefaultServer;
  double timeout_s = 600;
  int concurrency = 1;
  double request_rate = std::numeric_limits<double>::infinity();
  double burstiness = 1.0;
  int max_concurrency = 0;
  int64_t num_prompts = 100;
  double duration_s = 0;
  int warmup = 1;
  int input_len = 128, output_len = 128;
  std::string input_dist = "fixed", output_dist = "fixed";
  double input_spread = 0, output_spread = 0;
  std::string dataset;
  int dataset_output_len = 0;
  std::string dataset_as = "auto";
  int dataset_max_input_len = 1024;  // vLLM's ShareGPT filter
  int dataset_max_total_len = 2048;
  bool random_ids = false;
  bool ignore_eos = false;
  float temperature = 0.0f;
  float top_p = 1.0f;
  int top_k = 0;
  uint64_t seed = 0;
  std::string goodput;
  std::string json_path;
  std::string label;
  std::vector<std::string> metadata;
  bool no_requests = false;
  int64_t max_errors = 0;
  bool no_progress = false;
};

std::string Iso8601Now() {
  std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

nlohmann::json ProtoJson(const google::protobuf::Message& m) {
  google::protobuf::util::JsonPrintOptions opts;
  opts.preserve_proto_field_names = true;
  opts.always_print_primitive_fields = true;
  std::string s;
  (void)google::protobuf::util::MessageToJsonString(m, &s, opts);
  return nlohmann::json::parse(s, nullptr, false);
}

std::string HostName() {
  char buf[256] = {};
  return gethostname(buf, sizeof(buf) - 1) == 0 ? buf : "";
}

int ServerError(const std::string& what, const grpc::Status& s) {
  std::cerr << "error: " << what << ": " << client::StatusCodeName(s.error_code()) << ": "
            << s.error_message() << "\n";
  return client::kExitServerError;
}

absl::StatusOr<int> CountTokens(v1::LeankService::Stub& stub, const BenchPrompt& p, bool special,
                                double timeout_s) {
  v1::TokenizeRequest req;
  if (!p.messages.empty()) {
    for (const auto& [role, content] : p.messages) {
      v1::ChatMessage* m = req.mutable_messages()->add_messages();
      m->set_role(role);
      m->set_content(content);
    }
  } else {
    req.set_text(p.text);
    req.set_add_special_tokens(special);
  }
  grpc::ClientContext ctx;
  ctx.set_deadline(client::DeadlineIn(timeout_s));
  v1::TokenizeResponse resp;
  grpc::Status s = stub.Tokenize(&ctx, req, &resp);
  if (!s.ok()) {
    return absl::UnavailableError("Tokenize: " + client::StatusCodeName(s.error_code()) + ": " +
                                  s.error_message());
  }
  return resp.token_ids_size();
}

std::string RunTitle(const Flags& f, const RunOptions& o) {
  char buf[200];
  const std::string prefix = f.label.empty() ? "" : f.label + ": ";
  if (o.open_loop()) {
    std::snprintf(buf, sizeof(buf), "open loop, %.3g req/s, burstiness %.3g", o.request_rate,
                  o.burstiness);
    std::string s = buf;
    if (o.max_concurrency > 0) s += ", max concurrency " + std::to_string(o.max_concurrency);
    return prefix + s;
  }
  std::snprintf(buf, sizeof(buf), "closed loop, concurrency %d", o.concurrency);
  return prefix + buf;
}

int Main(int argc, char** argv) {
  Flags f;
  CLI::App app{"leank-bench: load tester of a leank-serve gRPC server", "leank-bench"};
  // Number flags go through client::FiniteNumber: CLI11's PositiveNumber and Range let
  // "nan" through (--burstiness nan aborted in ArrivalProcess; a NaN rate or duration
  // was silently ignored, a NaN or huge timeout or spread reached an undefined cast).
  app.add_option("--server", f.server, "host:port")
      ->capture_default_str()
      ->check(client::ServerAddress());
  app.add_option("--timeout", f.timeout_s, "Seconds each request may take")
      ->capture_default_str()
      ->check(client::FiniteNumber(0, client::kMaxTimeoutSeconds, /*lo_open=*/true));
  auto* load = "Load";
  app.add_option("--concurrency", f.concurrency,
                 "Closed loop: clients, each with one request in flight")
      ->group(load)
      ->capture_default_str()
      ->check(CLI::Range(1, 100000));
  auto* rate = app.add_option("--request-rate", f.request_rate,
                              "Open loop: mean arrivals per second (Poisson by default)")
                   ->group(load)
                   ->check(client::FiniteNumber(0, 1e9, /*lo_open=*/true));
  app.add_option("--burstiness", f.burstiness,
                 "Open loop: gamma shape of the inter-arrival times (1 = Poisson, <1 burstier)")
      ->group(load)
      ->capture_default_str()
      ->check(client::FiniteNumber(0, 1e6, /*lo_open=*/true))
      ->needs(rate);
  app.add_option("--max-concurrency", f.max_concurrency,
                 "Open loop: most requests in flight (0 = no cap)")
      ->group(load)
      ->check(CLI::Range(0, 100000))
      ->needs(rate);
  auto* num =
      app.add_option("--num-prompts", f.num_prompts, "Requests to send (and distinct prompts made)")
          ->group(load)
          ->capture_default_str()
          ->check(CLI::Range(int64_t{1}, int64_t{10000000}));
  app.add_option("--duration", f.duration_s,
                 "Send for this many seconds instead (prompts are cycled; with --num-prompts, "
                 "whichever ends first)")
      ->group(load)
      ->check(client::FiniteNumber(0, 1e9, /*lo_open=*/true));
  app.add_option("--warmup", f.warmup, "Requests sent (and not measured) before the run")
      ->group(load)
      ->capture_default_str()
      ->check(CLI::Range(0, 1 << 20));
  app.add_option("--max-errors", f.max_errors,
                 "Stop sending after this many failed requests (0 = never)")
      ->group(load)
      ->check(CLI::Range(int64_t{0}, std::numeric_limits<int64_t>::max()));

  auto* wl = "Workload";
  app.add_option("--input-len", f.input_len, "Synthetic prompt tokens (mean)")
      ->group(wl)
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 24));
  app.add_option("--input-dist", f.input_dist,
                 "fixed | uniform (mean +- spread) | normal (stddev spread)")
      ->group(wl)
      ->capture_default_str()
      ->check(CLI::IsMember({"fixed", "uniform", "normal"}));
  app.add_option("--input-spread", f.input_spread, "Half-range (uniform) or stddev (normal)")
      ->group(wl)
      ->check(client::FiniteNumber(0, 1 << 24));
  app.add_option("--output-len", f.output_len, "Output tokens asked for (max_tokens; mean)")
      ->group(wl)
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 24));
  app.add_option("--output-dist", f.output_dist, "fixed | uniform | normal")
      ->group(wl)
      ->capture_default_str()
      ->check(CLI::IsMember({"fixed", "uniform", "normal"}));
  app.add_option("--output-spread", f.output_spread, "Half-range (uniform) or stddev (normal)")
      ->group(wl)
      ->check(client::FiniteNumber(0, 1 << 24));
  app.add_option("--dataset", f.dataset,
                 "JSONL (or JSON array) of ShareGPT/OpenAI-style conversations")
      ->group(wl)
      ->check(CLI::ExistingFile);
  app.add_option("--dataset-output-len", f.dataset_output_len,
                 "Dataset: fixed max_tokens instead of each first reply's length")
      ->group(wl)
      ->check(CLI::Range(0, 1 << 24));
  app.add_option("--dataset-max-input-len", f.dataset_max_input_len,
                 "Dataset: skip prompts over this many tokens (vLLM's 1024; 0 = no cap)")
      ->group(wl)
      ->capture_default_str()
      ->check(CLI::Range(0, 1 << 24));
  app.add_option("--dataset-max-total-len", f.dataset_max_total_len,
                 "Dataset: skip rows whose prompt + output exceed this (vLLM's 2048; 0 = no cap)")
      ->group(wl)
      ->capture_default_str()
      ->check(CLI::Range(0, 1 << 24));
  app.add_option("--dataset-as", f.dataset_as,
                 "Dataset prompts sent as messages (chat template) or text")
      ->group(wl)
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "messages", "text"}));
  app.add_flag("--random-ids", f.random_ids,
               "Synthetic prompts of random token ids (no Tokenize call; may hit special tokens)")
      ->group(wl);
  app.add_option("--seed", f.seed, "Seed of the workload and arrival RNGs")
      ->group(wl)
      ->capture_default_str()
      ->check(client::Uint64Text());

  auto* samp = "Sampling";
  app.add_flag("--ignore-eos", f.ignore_eos, "Generate exactly max_tokens (no early EOS)")
      ->group(samp);
  app.add_option("--temperature", f.temperature, "0 = greedy")->group(samp)->capture_default_str();
  app.add_option("--top-p", f.top_p)->group(samp)->capture_default_str();
  app.add_option("--top-k", f.top_k)->group(samp)->capture_default_str();

  auto* out = "Output";
  app.add_option("--goodput", f.goodput,
                 "SLOs of goodput, e.g. ttft:500,tpot:50 (ms; keys ttft, tpot, e2el)")
      ->group(out);
  app.add_option("--json", f.json_path, "Write the result as JSON to this file")->group(out);
  app.add_option("--label", f.label, "Name of this run in the JSON and plots (e.g. dense, leank)")
      ->group(out);
  app.add_option("--metadata", f.metadata, "KEY=VALUE added to the JSON's metadata (repeatable)")
      ->group(out)
      ->take_all();
  app.add_flag("--no-requests", f.no_requests, "Leave per-request records out of the JSON")
      ->group(out);
  app.add_flag("--no-progress", f.no_progress, "No progress line on stderr")->group(out);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? client::kExitOk : client::kExitUsage;
  }
  auto usage = [](const std::string& msg) {
    std::cerr << "error: " << msg << "\nRun with --help for more information.\n";
    return client::kExitUsage;
  };
  if (app.count("--concurrency") > 0 && rate->count() > 0) {
    return usage("--concurrency is the closed loop; with --request-rate use --max-concurrency");
  }
  absl::StatusOr<Slo> slo = ParseSlo(f.goodput);
  if (!slo.ok()) return usage(std::string(slo.status().message()));
  nlohmann::json metadata = nlohmann::json::object();
  for (const std::string& kv : f.metadata) {
    const size_t eq = kv.find('=');
    if (eq == std::string::npos || eq == 0)
      return usage("--metadata '" + kv + "': expected KEY=VALUE");
    metadata[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  // The JSON is written after the run: a path that cannot be written is found now,
  // not after what may be hours of load (the probe leaves no new file behind).
  if (!f.json_path.empty()) {
    std::error_code ec;
    const bool existed = std::filesystem::exists(f.json_path, ec);
    const bool writable = !std::filesystem::is_directory(f.json_path, ec) &&
                          std::ofstream(f.json_path, std::ios::app).good();
    if (!existed) std::filesystem::remove(f.json_path, ec);
    if (!writable) return usage("--json: cannot write " + f.json_path);
  }
  const bool by_duration = f.duration_s > 0;

  // Model info: max length, vocabulary, chat template.
  auto channel = client::MakeChannel(f.server);
  auto stub = std::shared_ptr<v1::LeankService::Stub>(v1::LeankService::NewStub(channel));
  v1::ModelInfo info;
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(client::DeadlineIn(std::min(f.timeout_s, 60.0)));
    if (grpc::Status s = stub->GetModelInfo(&ctx, {}, &info); !s.ok()) {
      return ServerError("GetModelInfo on " + f.server, s);
    }
  }

  // Prompts.
  std::vector<BenchPrompt> prompts;
  const int64_t distinct = by_duration && num->count() == 0 ? 1000 : f.num_prompts;
  if (!f.dataset.empty()) {
    DatasetOptions d;
    d.max_prompts = distinct;
    d.fixed_output_len = f.dataset_output_len;
    d.max_model_len = info.max_model_len();
    d.max_input_len = f.dataset_max_input_len;
    d.max_total_len = f.dataset_max_total_len;
    d.as_messages =
        f.dataset_as == "messages" || (f.dataset_as == "auto" && info.has_chat_template());
    d.seed = f.seed;
    absl::StatusOr<std::vector<BenchPrompt>> loaded =
        LoadConversations(f.dataset, d, [&](const BenchPrompt& p, bool special) {
          return CountTokens(*stub, p, special, std::min(f.timeout_s, 60.0));
        });
    if (!loaded.ok()) {
      std::cerr << "error: " << loaded.status().message() << "\n";
      return absl::IsUnavailable(loaded.status()) ? client::kExitServerError : client::kExitUsage;
    }
    prompts = *std::move(loaded);
  } else {
    std::vector<int32_t> corpus;
    if (f.random_ids) {
      std::mt19937_64 rng(f.seed ^ 0x5eed);
      std::uniform_int_distribution<int32_t> id(0, std::max(1, info.vocab_size()) - 1);
      corpus.resize(65536);
      for (int32_t& t : corpus) t = id(rng);
    } else {
      v1::TokenizeRequest req;
      req.set_text(SyntheticCorpusText());
      req.set_add_special_tokens(false);
      v1::TokenizeResponse resp;
      grpc::ClientContext ctx;
      ctx.set_deadline(client::DeadlineIn(std::min(f.timeout_s, 60.0)));
      if (grpc::Status s = stub->Tokenize(&ctx, req, &resp); !s.ok()) {
        return ServerError("Tokenize (synthetic corpus; --random-ids avoids it)", s);
      }
      corpus.assign(resp.token_ids().begin(), resp.token_ids().end());
      if (corpus.empty())
        return ServerError("Tokenize", grpc::Status(grpc::StatusCode::INTERNAL, "no tokens"));
    }
    LengthSpec in{*ParseLengthDist(f.input_dist), f.input_len, f.input_spread};
    LengthSpec outl{*ParseLengthDist(f.output_dist), f.output_len, f.output_spread};
    if (info.max_model_len() > 0 && f.input_len + f.output_len > info.max_model_len()) {
      std::cerr << "warning: input " << f.input_len << " + output " << f.output_len
                << " tokens exceed max_model_len " << info.max_model_len()
                << "; inputs are shortened to fit\n";
    }
    prompts = MakeSyntheticPrompts(corpus, distinct, in, outl, info.max_model_len(), f.seed);
  }

  v1::GenerateRequest base;
  base.set_temperature(f.temperature);
  if (f.top_p != 1.0f) base.set_top_p(f.top_p);
  base.set_top_k(f.top_k);
  base.set_ignore_eos(f.ignore_eos);

  RunOptions o;
  o.concurrency = f.concurrency;
  o.request_rate = f.request_rate;
  o.burstiness = f.burstiness;
  o.max_concurrency = f.max_concurrency;
  o.num_requests =
      by_duration && num->count() == 0 ? std::numeric_limits<int64_t>::max() : f.num_prompts;
  o.duration_s = by_duration ? f.duration_s : std::numeric_limits<double>::infinity();
  o.timeout_s = f.timeout_s;
  o.max_errors = f.max_errors;
  o.seed = f.seed;

  std::signal(SIGINT, OnSigint);
  SteadyClock clock;
  const bool tty = isatty(STDERR_FILENO) != 0;

  // Warm-up: short, sequential-ish, not measured; a failure here is a server error.
  if (f.warmup > 0) {
    RunOptions w = o;
    w.request_rate = std::numeric_limits<double>::infinity();
    w.concurrency = std::min(f.warmup, std::max(1, f.concurrency));
    w.num_requests = f.warmup;
    w.duration_s = std::numeric_limits<double>::infinity();
    w.max_errors = 1;
    Progress wp;
    if (!f.no_progress) std::cerr << "warm-up: " << f.warmup << " request(s)\n";
    RunResult wr = RunLoad(stub, prompts, base, w, &clock, &wp, &g_stop);
    for (const RequestRecord& r : wr.records) {
      if (!r.ok) {
        std::cerr << "error: warm-up request failed: " << r.error_code << ": " << r.error_message
                  << "\n";
        return client::kExitServerError;
      }
    }
  }

  Progress progress;
  ProgressBar bar(&progress, o.num_requests, o.duration_s, &clock, stderr, tty);
  if (!f.no_progress) bar.Start();
  RunResult run = RunLoad(stub, prompts, base, o, &clock, &progress, &g_stop);
  if (!f.no_progress) bar.Finish();
  if (g_stop.load()) std::cerr << "interrupted: reporting the requests finished so far\n";

  Report report = BuildReport(run.records, *slo, run.duration_s);
  std::cout << FormatReport(report, RunTitle(f, o), *slo) << std::flush;

  if (!f.json_path.empty()) {
    nlohmann::json slo_json = nlohmann::json::object();
    if (std::isfinite(slo->ttft_ms)) slo_json["ttft_ms"] = slo->ttft_ms;
    if (std::isfinite(slo->tpot_ms)) slo_json["tpot_ms"] = slo->tpot_ms;
    if (std::isfinite(slo->e2el_ms)) slo_json["e2el_ms"] = slo->e2el_ms;
    nlohmann::json config = {
        {"server", f.server},
        {"mode", o.open_loop() ? "open" : "closed"},
        {"concurrency", o.open_loop() ? nlohmann::json(nullptr) : nlohmann::json(o.concurrency)},
        {"request_rate", o.open_loop() ? nlohmann::json(o.request_rate) : nlohmann::json(nullptr)},
        {"burstiness", f.burstiness},
        {"max_concurrency", f.max_concurrency},
        // Requests the run was allowed to send: none when --duration alone bounds it
        // (the flag's default, 100, did not limit anything then).
        {"num_prompts", o.num_requests == std::numeric_limits<int64_t>::max()
                            ? nlohmann::json(nullptr)
                            : nlohmann::json(f.num_prompts)},
        {"duration_s", by_duration ? nlohmann::json(f.duration_s) : nlohmann::json(nullptr)},
        {"warmup", f.warmup},
        {"dataset", f.dataset.empty() ? nlohmann::json(nullptr) : nlohmann::json(f.dataset)},
        {"dataset_output_len", f.dataset_output_len},
        {"dataset_as", f.dataset_as},
        {"dataset_max_input_len", f.dataset_max_input_len},
        {"dataset_max_total_len", f.dataset_max_total_len},
        {"input_len", f.input_len},
        {"input_dist", f.input_dist},
        {"input_spread", f.input_spread},
        {"output_len", f.output_len},
        {"output_dist", f.output_dist},
        {"output_spread", f.output_spread},
        {"random_ids", f.random_ids},
        {"ignore_eos", f.ignore_eos},
        {"temperature", f.temperature},
        {"top_p", f.top_p},
        {"top_k", f.top_k},
        {"seed", f.seed},
        {"timeout_s", f.timeout_s},
        {"goodput_slo", slo_json}};
    nlohmann::json j = {{"tool", "leank-bench"},     {"schema_version", 1},
                        {"label", f.label},          {"date", Iso8601Now()},
                        {"client_host", HostName()}, {"interrupted", g_stop.load()},
                        {"metadata", metadata},      {"config", config},
                        {"server", ProtoJson(info)}, {"results", ReportToJson(report)}};
    if (!f.no_requests) j["requests"] = RequestsToJson(run.records);
    std::ofstream os(f.json_path);
    os << j.dump(2) << "\n";
    if (!os) {
      std::cerr << "error: --json: cannot write " << f.json_path << "\n";
      return client::kExitUsage;
    }
  }
  return report.failed > 0 ? kExitFailedRequests : client::kExitOk;
}

}  // namespace
}  // namespace leank::bench

int main(int argc, char** argv) { return leank::bench::Main(argc, argv); }
