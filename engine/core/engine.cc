#include "engine/core/engine.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>
#include <random>
#include <unordered_map>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "cache/kv_cache.h"
#include "engine/core/backend.h"
#include "engine/core/scheduler.h"
#include "engine/core/stop_checker.h"
#include "engine/cpu/cpu_backend.h"
#ifdef LEANK_HAVE_CUDA
#include "engine/cuda/cuda_backend.h"
#endif
#include "engine/model/weights.h"
#include "spdlog/spdlog.h"

namespace leank {
namespace {

using Clock = std::chrono::steady_clock;
constexpr int64_t kDefaultCpuKvBytes = int64_t{1} << 30;
constexpr int kMaxStopStrings = 16;
constexpr size_t kMaxStopStringBytes = 256;
constexpr int kMaxLogprobs = 20;
// Below this temperature sampling is greedy, as in vLLM (_SAMPLING_EPS): dividing by it
// would only turn exact or near ties (a few ulps apart) at the top into random draws.
constexpr float kGreedyBelowTemperature = 1e-5f;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

struct EngineRequest {
  EngineRequest(RequestId id, const Tokenizer& tok, GenerationParams p, uint64_t seed)
      : params(std::move(p)),
        seed(seed),
        sampler(seed),
        stop(tok, params.stop, params.include_stop_str_in_output) {
    seq.id = id;
  }
  SchedSeq seq;
  int prompt_len = 0;
  GenerationParams params;
  uint64_t seed;  // of `sampler`, and of the draws when the backend samples
  Sampler sampler;
  StopChecker stop;
  std::vector<int32_t> output;
  Clock::time_point arrival;
  std::optional<Clock::time_point> first_scheduled, first_token;
};

class EngineImpl final : public Engine {
 public:
  absl::Status Init(const EngineOptions& options);

  const ModelConfig& config() const override { return model_.config; }
  const Tokenizer& tokenizer() const override { return *tokenizer_; }
  const ChatTemplate* chat_template() const override {
    return chat_template_ ? &*chat_template_ : nullptr;
  }
  absl::Status chat_template_status() const override { return chat_template_status_; }
  ModelInfo info() const override { return info_; }
  absl::Status Validate(const std::vector<int32_t>& prompt,
                        const GenerationParams& params) const override;
  absl::Status AddRequest(RequestId id, std::vector<int32_t> prompt,
                          GenerationParams params) override;
  void AbortRequest(RequestId id) override { pending_aborts_.push_back(id); }
  bool HasWork() const override { return !requests_.empty(); }
  std::vector<RequestOutput> Step() override;
  EngineStats stats() const override;

 private:
  RequestOutput Finish(EngineRequest& r, FinishReason reason, absl::Status error = {});
  void FillUsage(const EngineRequest& r, RequestOutput* out) const;
  bool IsEos(int32_t token) const;
  // Tokens that cannot be drawn at this step of `r` (EOS and stop ids before min_tokens).
  std::vector<int32_t> BannedTokens(const EngineRequest& r) const;

  EngineOptions options_;
  LoadedModel model_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::optional<ChatTemplate> chat_template_;
  absl::Status chat_template_status_;
  std::unique_ptr<cache::CacheLayout> layout_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<cache::KvCacheManager> cache_;
  std::unique_ptr<Scheduler> scheduler_;
  std::unordered_map<RequestId, std::unique_ptr<EngineRequest>> requests_;
  std::vector<RequestId> pending_aborts_;
  int max_model_len_ = 0;
  int64_t kv_capacity_tokens_ = 0;
  int64_t next_arrival_ = 0;
  bool device_sampling_ = false;  // options_.gpu_sampling && backend_->samples_on_device()
  std::mt19937_64 seed_source_{std::random_device{}()};
  ModelInfo info_;
};

// Options checked against config.json before any weight is mapped or memory allocated.
absl::Status CheckOptions(const EngineOptions& o, const ModelConfig& cfg) {
  auto bad = [](auto&&... parts) { return absl::InvalidArgumentError(absl::StrCat(parts...)); };
  if (o.max_model_len < 0)
    return bad("max_model_len must be >= 0 (0: the model's), got ", o.max_model_len);
  if (o.max_model_len > cfg.max_position_embeddings) {
    return bad("max_model_len ", o.max_model_len, " exceeds the model's context length (",
               "max_position_embeddings ", cfg.max_position_embeddings, " in config.json)");
  }
  if (cfg.sliding_window > 0 && o.max_model_len > cfg.sliding_window) {
    return bad("max_model_len ", o.max_model_len, " exceeds the model's sliding_window ",
               cfg.sliding_window,
               " (sliding-window attention is not implemented: the engine "
               "serves at most sliding_window tokens)");
  }
  if (o.kv_cache_bytes < 0)
    return bad("kv_cache_bytes must be >= 0 (0: the backend's default), got ", o.kv_cache_bytes);
  if (o.target_context < 0) return bad("target_context must be >= 0, got ", o.target_context);
  if (o.max_num_seqs < 1) return bad("max_num_seqs must be >= 1, got ", o.max_num_seqs);
  if (o.max_batched_tokens < 1)
    return bad("max_batched_tokens must be >= 1, got ", o.max_batched_tokens);
  if (o.max_waiting < 1) return bad("max_waiting must be >= 1, got ", o.max_waiting);
  if (o.sink && *o.sink < 0) return bad("sink must be >= 0, got ", *o.sink);
  if (o.recent && *o.recent < 0) return bad("recent must be >= 0, got ", *o.recent);
  if (o.admission != "reserve" && o.admission != "optimistic") {
    return bad("admission must be 'reserve' or 'optimistic', got '", o.admission, "'");
  }
  return absl::OkStatus();
}

absl::Status EngineImpl::Init(const EngineOptions& options) {
  options_ = options;
  // config.json first: the options are checked before any weight is mapped.
  auto config = LoadModelConfig(options.model_dir);
  if (!config.ok()) return config.status();
  if (absl::Status s = CheckOptions(options, *config); !s.ok()) return s;
  auto model = LoadModel(options.model_dir, *std::move(config));
  if (!model.ok()) return model.status();
  model_ = *std::move(model);
  const ModelConfig& cfg = model_.config;

  auto tokenizer = Tokenizer::Load(options.model_dir / "tokenizer.json");
  if (!tokenizer.ok()) return tokenizer.status();
  tokenizer_ = *std::move(tokenizer);
  if (tokenizer_->vocab_size() > cfg.vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat("tokenizer.json has ", tokenizer_->vocab_size(),
                                                   " tokens but config.json vocab_size is ",
                                                   cfg.vocab_size));
  }
  auto tmpl = ChatTemplate::Load(options.model_dir / "tokenizer_config.json");
  if (tmpl.ok()) {
    chat_template_ = *std::move(tmpl);
  } else {
    chat_template_status_ = tmpl.status();
    spdlog::warn("no chat template: {}", std::string(tmpl.status().message()));
  }

  max_model_len_ = options.max_model_len > 0 ? options.max_model_len : cfg.max_position_embeddings;
  if (cfg.sliding_window > 0) max_model_len_ = std::min(max_model_len_, cfg.sliding_window);

  // Cache layout: dense unless a mask is given; sink/recent from flags, else the mask.
  std::optional<cache::Mask> mask;
  cache::LayoutOptions lo;
  lo.num_layers = cfg.num_layers;
  lo.num_kv_heads = cfg.num_kv_heads;
  lo.head_dim = cfg.head_dim;
  lo.block_size = options.block_size;
  lo.elem_bytes = options.backend == "cuda" ? 2 : 4;  // bf16 cache on the GPU
  if (!options.mask_path.empty()) {
    auto m = cache::LoadMask(options.mask_path, {cfg.num_layers, cfg.num_kv_heads, cfg.head_dim});
    if (!m.ok()) return m.status();
    mask = *std::move(m);
    lo.sink = mask->sink;
    lo.recent = mask->recent;
  } else {
    // Dense: no token is pruned, sink and recent play no part. The LeanK defaults
    // (128, 768) refused every block size that does not divide 128 ("sink 128 is not
    // a multiple of block_size 256" with no mask given); these fit any block size.
    lo.sink = 0;
    lo.recent = lo.block_size;
  }
  if (options.sink) lo.sink = *options.sink;
  if (options.recent) lo.recent = *options.recent;
  auto layout = cache::CacheLayout::Create(lo, mask);
  if (!layout.ok()) {
    // Say where a refused sink/recent the user did not give came from.
    const absl::string_view why = layout.status().message();
    std::vector<std::string> from_mask;
    for (const auto& [name, value, given] : {std::tuple{"sink", lo.sink, options.sink.has_value()},
                                             {"recent", lo.recent, options.recent.has_value()}}) {
      const std::string said = absl::StrCat(name, " ", value);
      if (mask && !given && absl::StrContains(why, said)) from_mask.push_back(said);
    }
    if (from_mask.empty()) return layout.status();
    return absl::Status(
        layout.status().code(),
        absl::StrCat(layout.status().message(), " (", absl::StrJoin(from_mask, ", "),
                     " from the metadata of ", options.mask_path.string(),
                     "; --sink / --recent override it)"));
  }
  layout_ = std::make_unique<cache::CacheLayout>(*std::move(layout));

  const int64_t target = options.target_context > 0 ? options.target_context : max_model_len_;
  int64_t budget = options.kv_cache_bytes > 0 ? options.kv_cache_bytes : kDefaultCpuKvBytes;
  cache::PoolSizes sizes;
  absl::StatusOr<std::unique_ptr<Backend>> backend = absl::UnimplementedError(
      absl::StrCat("backend '", options.backend, "' is not available in this build (have: cpu",
#ifdef LEANK_HAVE_CUDA
                   ", cuda",
#endif
                   ")"));
  if (options.backend == "cpu") {
    sizes = cache::SplitBudget(*layout_, budget, target, options.max_batched_tokens);
    backend =
        CreateCpuBackend(cfg, model_.weights, *layout_, sizes,
                         CpuBackendOptions{options.num_threads, options.cpu_bf16_activations});
  }
#ifdef LEANK_HAVE_CUDA
  if (options.backend == "cuda") {
    CudaBackendOptions co;
    co.max_batched_tokens = options.max_batched_tokens;
    co.max_num_seqs = options.max_num_seqs;
    if (options.kv_cache_bytes <= 0) {
      // Default: 90% of what the weights and activations leave free.
      auto free_bytes = CudaFreeMemory(co.device);
      if (!free_bytes.ok()) return free_bytes.status();
      const int64_t fixed =
          CudaWeightBytes(cfg) + CudaActivationBytes(cfg, co.max_batched_tokens, co.max_num_seqs);
      budget = static_cast<int64_t>(0.9 * static_cast<double>(*free_bytes - fixed));
      if (budget <= 0) {
        return absl::ResourceExhaustedError(
            absl::StrCat("the model does not fit on the GPU: weights + activations need ", fixed,
                         " bytes, ", *free_bytes, " are free"));
      }
    }
    sizes = cache::SplitBudget(*layout_, budget, target, options.max_batched_tokens);
    backend = CreateCudaBackend(cfg, model_.weights, *layout_, sizes, co);
  }
#endif
  if (!backend.ok()) return backend.status();
  backend_ = *std::move(backend);
  if (options.wrap_backend) backend_ = options.wrap_backend(std::move(backend_));
  device_sampling_ = options.gpu_sampling && backend_->samples_on_device();
  cache_ = std::make_unique<cache::KvCacheManager>(*layout_, sizes);
  SchedulerOptions so{options.max_num_seqs, options.max_batched_tokens};
  if (options.admission == "optimistic") so.admission = SchedulerOptions::Admission::kOptimistic;
  scheduler_ = std::make_unique<Scheduler>(so, cache_.get());
  // What one request can really run to: a longer one passing Validate failed mid-way
  // with "does not fit in the KV cache".
  kv_capacity_tokens_ = scheduler_->MaxSequenceTokens();
  if (kv_capacity_tokens_ < 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "KV cache budget of ", budget, " bytes holds no useful sequence (", kv_capacity_tokens_,
        " tokens in ", sizes.num_full_blocks, " full + ", sizes.num_pruned_blocks,
        " pruned blocks of ", lo.block_size, " tokens; a sequence needs at least 2)"));
  }
  if (kv_capacity_tokens_ < max_model_len_) {
    spdlog::warn(
        "the KV cache holds {} tokens per sequence, less than max_model_len {}: longer requests "
        "are refused (a larger KV budget or a smaller max_model_len matches them)",
        kv_capacity_tokens_, max_model_len_);
  }

  info_.model = cfg.name;
  info_.architecture = cfg.architecture;
  info_.max_model_len = max_model_len_;
  info_.dtype = backend_->name() == "cuda" ? "bfloat16" : "float32";
  info_.backend = backend_->name();
  info_.masked = mask.has_value();
  info_.k_sparsity = mask ? 1.0 - mask->KeptFraction() : 0.0;
  info_.sink = layout_->dense() ? 0 : lo.sink;
  info_.recent = layout_->dense() ? 0 : lo.recent;
  info_.block_size = lo.block_size;
  info_.kv_capacity_tokens = kv_capacity_tokens_;
  info_.vocab_size = cfg.vocab_size;
  spdlog::info(
      "engine: {} ({}), {} layers, max_model_len {}, cache {} ({} full + {} pruned blocks "
      "of {} tokens), capacity {} tokens",
      cfg.name, cfg.architecture, cfg.num_layers, max_model_len_,
      mask ? absl::StrCat("LeanK, K sparsity ", info_.k_sparsity) : "dense", sizes.num_full_blocks,
      sizes.num_pruned_blocks, lo.block_size, kv_capacity_tokens_);
  return absl::OkStatus();
}

absl::Status EngineImpl::Validate(const std::vector<int32_t>& prompt,
                                  const GenerationParams& p) const {
  auto bad = [](auto&&... parts) { return absl::InvalidArgumentError(absl::StrCat(parts...)); };
  if (prompt.empty()) return bad("prompt is empty");
  const int vocab = model_.config.vocab_size;
  for (size_t i = 0; i < prompt.size(); ++i) {
    if (prompt[i] < 0 || prompt[i] >= vocab) {
      return bad("prompt token_ids[", i, "] = ", prompt[i], " is outside the vocabulary [0, ",
                 vocab, ")");
    }
  }
  if (p.max_tokens < 1) return bad("max_tokens must be >= 1, got ", p.max_tokens);
  if (p.min_tokens < 0 || p.min_tokens > p.max_tokens) {
    return bad("min_tokens must be in [0, max_tokens=", p.max_tokens, "], got ", p.min_tokens);
  }
  const int64_t total = static_cast<int64_t>(prompt.size()) + p.max_tokens;
  if (total > max_model_len_) {
    return bad("prompt (", prompt.size(), " tokens) + max_tokens (", p.max_tokens,
               ") exceeds the model's context length of ", max_model_len_);
  }
  if (total > kv_capacity_tokens_) {
    return bad("prompt (", prompt.size(), " tokens) + max_tokens (", p.max_tokens,
               ") exceeds the KV cache capacity of ", kv_capacity_tokens_, " tokens");
  }
  const SamplingParams& s = p.sampling;
  if (!std::isfinite(s.temperature) || s.temperature < 0) {
    return bad("temperature must be a finite number >= 0, got ", s.temperature);
  }
  if (s.top_k < 0) return bad("top_k must be >= 0 (0 = off), got ", s.top_k);
  if (!(s.top_p > 0 && s.top_p <= 1)) return bad("top_p must be in (0, 1], got ", s.top_p);
  if (!(s.min_p >= 0 && s.min_p <= 1)) return bad("min_p must be in [0, 1], got ", s.min_p);
  if (!(std::isfinite(s.repetition_penalty) && s.repetition_penalty > 0)) {
    return bad("repetition_penalty must be a finite number > 0, got ", s.repetition_penalty);
  }
  if (!(s.presence_penalty >= -2 && s.presence_penalty <= 2)) {
    return bad("presence_penalty must be in [-2, 2], got ", s.presence_penalty);
  }
  if (!(s.frequency_penalty >= -2 && s.frequency_penalty <= 2)) {
    return bad("frequency_penalty must be in [-2, 2], got ", s.frequency_penalty);
  }
  if (p.logprobs > kMaxLogprobs) {
    return bad("logprobs must be <= ", kMaxLogprobs, ", got ", p.logprobs);
  }
  if (static_cast<int>(p.stop.size()) > kMaxStopStrings) {
    return bad("stop: at most ", kMaxStopStrings, " stop strings, got ", p.stop.size());
  }
  for (size_t i = 0; i < p.stop.size(); ++i) {
    if (p.stop[i].empty()) return bad("stop[", i, "] is empty");
    if (p.stop[i].size() > kMaxStopStringBytes) {
      return bad("stop[", i, "] is longer than ", kMaxStopStringBytes, " bytes");
    }
    if (!IsValidUtf8(p.stop[i])) return bad("stop[", i, "] is not valid UTF-8");
  }
  for (size_t i = 0; i < p.stop_token_ids.size(); ++i) {
    if (p.stop_token_ids[i] < 0 || p.stop_token_ids[i] >= vocab) {
      return bad("stop_token_ids[", i, "] = ", p.stop_token_ids[i], " is outside the vocabulary");
    }
  }
  return absl::OkStatus();
}

absl::Status EngineImpl::AddRequest(RequestId id, std::vector<int32_t> prompt,
                                    GenerationParams params) {
  if (absl::Status s = Validate(prompt, params); !s.ok()) return s;
  if (requests_.count(id)) return absl::AlreadyExistsError(absl::StrCat("request ", id, " exists"));
  if (scheduler_->num_waiting() >= options_.max_waiting) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the waiting queue is full (", options_.max_waiting, " requests); retry later"));
  }
  // Both samplers (CPU and device) see temperature 0, hence argmax.
  if (params.sampling.temperature < kGreedyBelowTemperature) params.sampling.temperature = 0.0f;
  const uint64_t seed = params.sampling.has_seed ? params.sampling.seed : seed_source_();
  auto r = std::make_unique<EngineRequest>(id, *tokenizer_, std::move(params), seed);
  r->prompt_len = static_cast<int>(prompt.size());
  r->seq.max_total_tokens = static_cast<int64_t>(prompt.size()) + r->params.max_tokens;
  r->seq.tokens = std::move(prompt);
  r->seq.arrival = next_arrival_++;
  r->arrival = Clock::now();
  scheduler_->AddWaiting(&r->seq);
  requests_.emplace(id, std::move(r));
  return absl::OkStatus();
}

bool EngineImpl::IsEos(int32_t token) const {
  for (int e : model_.config.eos_token_ids) {
    if (e == token) return true;
  }
  return false;
}

std::vector<int32_t> EngineImpl::BannedTokens(const EngineRequest& r) const {
  std::vector<int32_t> banned;
  const GenerationParams& p = r.params;
  if (static_cast<int>(r.output.size()) >= p.min_tokens) return banned;
  if (!p.ignore_eos) {
    for (int e : model_.config.eos_token_ids) {
      if (e >= 0 && e < model_.config.vocab_size) banned.push_back(e);
    }
  }
  banned.insert(banned.end(), p.stop_token_ids.begin(), p.stop_token_ids.end());
  return banned;
}

void EngineImpl::FillUsage(const EngineRequest& r, RequestOutput* out) const {
  out->id = r.seq.id;
  out->prompt_tokens = r.prompt_len;
  out->completion_tokens = static_cast<int>(r.output.size());
  if (r.first_scheduled) out->queue_time_s = Seconds(*r.first_scheduled - r.arrival);
  if (r.first_token) out->ttft_s = Seconds(*r.first_token - r.arrival);
}

RequestOutput EngineImpl::Finish(EngineRequest& r, FinishReason reason, absl::Status error) {
  RequestOutput out;
  FillUsage(r, &out);
  out.finished = true;
  out.finish_reason = reason;
  out.error = std::move(error);
  out.text = r.stop.Flush();  // empty when a stop string ended the text
  scheduler_->Remove(&r.seq);
  return out;
}

std::vector<RequestOutput> EngineImpl::Step() {
  std::vector<RequestOutput> outputs;
  std::vector<RequestId> finished;
  for (RequestId id : pending_aborts_) {
    auto it = requests_.find(id);
    if (it == requests_.end()) continue;
    outputs.push_back(Finish(*it->second, FinishReason::kAbort));
    requests_.erase(it);
  }
  pending_aborts_.clear();

  Schedule schedule = scheduler_->Step();
  for (SchedSeq* seq : schedule.unschedulable) {
    auto it = requests_.find(seq->id);
    outputs.push_back(
        Finish(*it->second, FinishReason::kError,
               absl::ResourceExhaustedError("the request does not fit in the KV cache")));
    requests_.erase(it);
  }
  if (schedule.seqs.empty()) {
    cache_->EndStep();
    return outputs;
  }

  StepPlan plan;
  const auto now = Clock::now();
  for (const ScheduledSeq& s : schedule.seqs) {
    EngineRequest& r = *requests_.at(s.seq->id);
    if (!r.first_scheduled) r.first_scheduled = now;
    SeqWork w;
    w.cache = s.cache;
    w.tokens.assign(s.seq->tokens.begin() + s.seq->num_cached,
                    s.seq->tokens.begin() + s.seq->num_cached + s.cache.num_new_tokens);
    w.want_logits = s.want_logits;
    // On the device unless top-n logprobs are wanted (the device returns only the token's).
    if (s.want_logits && device_sampling_ && r.params.logprobs <= 0) {
      DeviceSample& d = w.sample.emplace();
      d.params = r.params.sampling;
      d.seed = r.seed;
      d.step = r.output.size();
      d.banned = BannedTokens(r);
      d.prompt = std::span<const int32_t>(r.seq.tokens.data(), r.prompt_len);
      d.output = r.output;
    }
    plan.seqs.push_back(std::move(w));
  }
  StepOutput logits;
  absl::Status status = backend_->Forward(plan, &logits);
  if (!status.ok()) {
    spdlog::error("backend step failed: {}", std::string(status.message()));
    for (const ScheduledSeq& s : schedule.seqs) {
      outputs.push_back(Finish(*requests_.at(s.seq->id), FinishReason::kError, status));
      requests_.erase(s.seq->id);
    }
    cache_->EndStep();
    return outputs;
  }

  int64_t row = 0;
  for (size_t i = 0; i < schedule.seqs.size(); ++i) {
    const ScheduledSeq& s = schedule.seqs[i];
    EngineRequest& r = *requests_.at(s.seq->id);
    r.seq.num_cached += s.cache.num_new_tokens;
    if (!s.want_logits) continue;
    const int64_t this_row = row++;
    const GenerationParams& p = r.params;
    const bool can_stop = static_cast<int>(r.output.size()) >= p.min_tokens;
    SampleResult sample;
    if (plan.seqs[i].sample) {
      if (this_row >= static_cast<int64_t>(logits.sampled.size()) ||
          logits.sampled[this_row].token < 0 ||
          logits.sampled[this_row].token >= model_.config.vocab_size) {
        // A backend bug, not the request's fault; fail the request loudly.
        spdlog::error("backend returned no valid sampled token for row {}", this_row);
        outputs.push_back(
            Finish(r, FinishReason::kError,
                   absl::InternalError("the backend returned no valid sampled token")));
        finished.push_back(r.seq.id);
        continue;
      }
      sample.token = logits.sampled[this_row].token;
      sample.logprob = logits.sampled[this_row].logprob;
    } else {
      std::span<const float> in = logits.row(this_row);
      std::vector<float> l(in.begin(), in.end());
      // Before min_tokens, EOS and stop tokens cannot be drawn at all.
      for (int32_t t : BannedTokens(r)) l[t] = -INFINITY;
      const std::span<const int32_t> prompt(r.seq.tokens.data(), r.prompt_len);
      sample = r.sampler.Sample(l, p.sampling, prompt, r.output, p.logprobs);
    }
    if (!r.first_token) r.first_token = Clock::now();
    r.output.push_back(sample.token);
    r.seq.tokens.push_back(sample.token);

    RequestOutput out;
    out.tokens.push_back({sample.token, sample.logprob, std::move(sample.top)});
    FinishReason reason = FinishReason::kNone;
    const bool stop_token = std::find(p.stop_token_ids.begin(), p.stop_token_ids.end(),
                                      sample.token) != p.stop_token_ids.end();
    if (!p.ignore_eos && IsEos(sample.token)) {
      reason = FinishReason::kEos;
    } else if (stop_token) {
      reason = FinishReason::kStop;
    } else {
      StopChecker::Result sr = r.stop.Push(sample.token, can_stop);
      out.text = std::move(sr.text);
      if (sr.stopped) reason = FinishReason::kStop;
    }
    if (reason == FinishReason::kNone &&
        (static_cast<int>(r.output.size()) >= p.max_tokens ||
         static_cast<int>(r.seq.tokens.size()) >= max_model_len_)) {
      reason = FinishReason::kLength;
    }
    if (reason != FinishReason::kNone) {
      RequestOutput fin = Finish(r, reason);
      fin.tokens = std::move(out.tokens);
      fin.text = out.text + fin.text;
      outputs.push_back(std::move(fin));
      finished.push_back(r.seq.id);
    } else {
      FillUsage(r, &out);
      outputs.push_back(std::move(out));
    }
  }
  for (RequestId id : finished) requests_.erase(id);
  cache_->EndStep();
  return outputs;
}

EngineStats EngineImpl::stats() const {
  EngineStats s;
  s.running = scheduler_->num_running();
  s.waiting = scheduler_->num_waiting();
  s.kv_usage = cache_->Usage();
  s.kv_capacity_tokens = kv_capacity_tokens_;
  s.num_preemptions = scheduler_->num_preemptions();
  s.free_full_blocks = cache_->free_full_blocks();
  s.free_pruned_blocks = cache_->free_pruned_blocks();
  return s;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(const EngineOptions& options) {
  auto engine = std::make_unique<EngineImpl>();
  if (absl::Status s = engine->Init(options); !s.ok()) return s;
  return engine;
}

}  // namespace leank
