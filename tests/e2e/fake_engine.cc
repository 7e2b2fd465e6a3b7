#include "tests/e2e/fake_engine.h"

#include <algorithm>
#include <chrono>
#include <deque>
#include <list>
#include <map>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"

namespace leank::testing {
namespace {

const char* const kSpecialText[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};

class FakeTokenizer final : public Tokenizer {
 public:
  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text,
                                              bool add_special_tokens) const override {
    if (!IsValidUtf8(text)) return absl::InvalidArgumentError("text is not valid UTF-8");
    std::vector<int32_t> ids;
    size_t i = 0;
    while (i < text.size()) {
      bool matched = false;
      for (int s = 0; s < 3; ++s) {
        std::string_view sp = kSpecialText[s];
        if (text.substr(i, sp.size()) == sp) {
          ids.push_back(256 + s);
          i += sp.size();
          matched = true;
          break;
        }
      }
      if (!matched) ids.push_back(static_cast<unsigned char>(text[i++]));
    }
    return ids;
  }
  std::string DecodeBytes(std::span<const int32_t> ids, bool skip_special) const override {
    std::string out;
    for (int32_t id : ids) {
      if (id >= 0 && id < 256) {
        out.push_back(static_cast<char>(id));
      } else if (id >= 256 && id < kFakeVocab && !skip_special) {
        out += kSpecialText[id - 256];
      }
    }
    return out;
  }
  std::string Decode(std::span<const int32_t> ids, bool skip_special) const override {
    return DecodeBytes(ids, skip_special);  // the fake model emits ASCII only
  }
  int vocab_size() const override { return kFakeVocab; }
  std::optional<int32_t> TokenToId(std::string_view token) const override {
    for (int s = 0; s < 3; ++s) {
      if (token == kSpecialText[s]) return 256 + s;
    }
    if (token.size() == 1) return static_cast<unsigned char>(token[0]);
    return std::nullopt;
  }
  std::string IdToToken(int32_t id) const override {
    if (id >= 0 && id < 256) return std::string(1, static_cast<char>(id));
    if (id >= 256 && id < kFakeVocab) return kSpecialText[id - 256];
    return "";
  }
  bool IsSpecial(int32_t id) const override { return id >= 256 && id < kFakeVocab; }
};

struct Seq {
  RequestId id;
  std::vector<int32_t> prompt, output;
  GenerationParams params;
  int64_t computed = 0;  // tokens whose KV is "cached"
  int64_t blocks = 0;
  std::string text;  // decoded output so far (ASCII)
  size_t sent = 0;   // bytes of `text` already returned
  std::mt19937_64 rng;
  std::chrono::steady_clock::time_point arrival;
  double queue_time_s = -1, ttft_s = 0;
  bool aborted = false;
  int64_t total() const { return static_cast<int64_t>(prompt.size() + output.size()); }
};

// The "model": a hash of the last 4 tokens picks a letter or a space.
int32_t NextGreedy(const Seq& s) {
  uint64_t h = 1469598103934665603ull;
  const int64_t n = s.total();
  for (int64_t i = std::max<int64_t>(0, n - 4); i < n; ++i) {
    const int32_t t =
        i < static_cast<int64_t>(s.prompt.size()) ? s.prompt[i] : s.output[i - s.prompt.size()];
    h = (h ^ static_cast<uint64_t>(t)) * 1099511628211ull;
  }
  h ^= h >> 29;
  if (h % 53 == 0) return kFakeEos;
  static const char kAlphabet[] = "abcdefghijklmnopqrstuvwxyz ";
  return static_cast<unsigned char>(kAlphabet[h % 27]);
}

class FakeEngine final : public Engine {
 public:
  FakeEngine(const EngineOptions& o, const FakeEngineOptions& f) : o_(o), f_(f) {
    tokenizer_ = MakeFakeTokenizer();
    config_.architecture = "FakeForCausalLM";
    config_.model_type = "fake";
    config_.name = "fake-model";
    config_.vocab_size = kFakeVocab;
    config_.eos_token_ids = {kFakeEos};
    max_model_len_ = o.max_model_len > 0 ? o.max_model_len : 2048;
    config_.max_position_embeddings = max_model_len_;
    const int64_t tokens = o.kv_cache_bytes > 0 ? o.kv_cache_bytes / kFakeBytesPerToken : (1 << 20);
    num_blocks_ = tokens / o.block_size;
    free_blocks_ = num_blocks_;
    absl::StatusOr<ChatTemplate> t = ChatTemplate::FromTokenizerConfigJson(
        R"({"chat_template": "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}", "bos_token": "<|im_start|>", "eos_token": "<|im_end|>"})");
    if (t.ok()) {
      chat_template_ = std::make_unique<ChatTemplate>(*std::move(t));
    } else {
      chat_template_status_ = t.status();
    }
  }

  const ModelConfig& config() const override { return config_; }
  const Tokenizer& tokenizer() const override { return *tokenizer_; }
  const ChatTemplate* chat_template() const override { return chat_template_.get(); }
  absl::Status chat_template_status() const override { return chat_template_status_; }
  ModelInfo info() const override {
    ModelInfo i;
    i.model = config_.name;
    i.architecture = config_.architecture;
    i.max_model_len = max_model_len_;
    i.dtype = "float32";
    i.backend = "fake";
    i.block_size = o_.block_size;
    i.sink = o_.sink.value_or(0);
    i.recent = o_.recent.value_or(0);
    i.kv_capacity_tokens = num_blocks_ * o_.block_size;
    i.vocab_size = kFakeVocab;
    return i;
  }

  absl::Status Validate(const std::vector<int32_t>& prompt,
                        const GenerationParams& p) const override {
    if (prompt.empty()) return absl::InvalidArgumentError("prompt: empty");
    for (size_t i = 0; i < prompt.size(); ++i) {
      if (prompt[i] < 0 || prompt[i] >= kFakeVocab) {
        return absl::InvalidArgumentError(absl::StrCat("prompt[", i, "]: outside the vocabulary"));
      }
    }
    if (p.max_tokens <= 0) return absl::InvalidArgumentError("max_tokens: must be > 0");
    if (static_cast<int64_t>(prompt.size()) + p.max_tokens > max_model_len_) {
      return absl::InvalidArgumentError("max_tokens: prompt + max_tokens exceeds max_model_len");
    }
    if (static_cast<int64_t>(prompt.size()) + p.max_tokens > num_blocks_ * o_.block_size) {
      return absl::InvalidArgumentError(
          "max_tokens: prompt + max_tokens exceeds the KV cache capacity");
    }
    return absl::OkStatus();
  }

  absl::Status AddRequest(RequestId id, std::vector<int32_t> prompt,
                          GenerationParams params) override {
    if (absl::Status s = Validate(prompt, params); !s.ok()) return s;
    if (seqs_.count(id)) return absl::AlreadyExistsError(absl::StrCat("request ", id, " exists"));
    if (static_cast<int>(waiting_.size()) >= o_.max_waiting) {
      return absl::ResourceExhaustedError("waiting queue full");
    }
    auto seq = std::make_unique<Seq>();
    seq->id = id;
    seq->prompt = std::move(prompt);
    seq->params = std::move(params);
    seq->rng.seed(seq->params.sampling.has_seed ? seq->params.sampling.seed : id * 7919 + 1);
    seq->arrival = std::chrono::steady_clock::now();
    waiting_.push_back(seq.get());
    seqs_.emplace(id, std::move(seq));
    return absl::OkStatus();
  }

  void AbortRequest(RequestId id) override {
    auto it = seqs_.find(id);
    if (it != seqs_.end()) it->second->aborted = true;
  }
  bool HasWork() const override { return !seqs_.empty(); }

  std::vector<RequestOutput> Step() override {
    std::vector<RequestOutput> outs;
    // Aborts first: their blocks are free for this very step.
    for (auto it = seqs_.begin(); it != seqs_.end();) {
      if (it->second->aborted) {
        outs.push_back(Finish(*it->second, FinishReason::kAbort, ""));
        Remove(it->second.get());
        it = seqs_.erase(it);
      } else {
        ++it;
      }
    }
    // Plan: running first (FCFS), then admit waiting, within the token budget.
    int64_t budget = o_.max_batched_tokens;
    std::vector<std::pair<Seq*, int64_t>> plan;
    for (size_t i = 0; i < running_.size() && budget > 0;) {
      Seq* s = running_[i];
      const int64_t chunk = std::min(s->total() - s->computed, budget);
      if (!Reserve(s, chunk)) {
        Preempt(running_.back());  // newest first; may be `s` itself
        continue;
      }
      plan.push_back({s, chunk});
      budget -= chunk;
      ++i;
    }
    while (!waiting_.empty() && budget > 0 && static_cast<int>(running_.size()) < o_.max_num_seqs) {
      Seq* s = waiting_.front();
      const int64_t longest = static_cast<int64_t>(s->prompt.size()) + s->params.max_tokens;
      const int64_t need_blocks = (longest + o_.block_size - 1) / o_.block_size;
      if (need_blocks > num_blocks_) {  // can never fit
        outs.push_back(
            Finish(*s, FinishReason::kError, "the request does not fit in the KV cache"));
        waiting_.pop_front();
        seqs_.erase(s->id);
        continue;
      }
      const int64_t chunk = std::min(s->total() - s->computed, budget);
      if (!Reserve(s, chunk)) break;
      waiting_.pop_front();
      running_.push_back(s);
      if (s->queue_time_s < 0) s->queue_time_s = Since(s->arrival);
      plan.push_back({s, chunk});
      budget -= chunk;
    }
    if (f_.in_step) f_.in_step(steps_);
    if (f_.step_us > 0) std::this_thread::sleep_for(std::chrono::microseconds(f_.step_us));
    ++steps_;
    // "Run" and sample.
    for (auto [s, chunk] : plan) {
      s->computed += chunk;
      if (s->computed < s->total()) continue;  // prefill continues next step
      RequestOutput out = Sample(*s);
      const bool finished = out.finished;
      outs.push_back(std::move(out));
      if (finished) {
        Remove(s);
        seqs_.erase(s->id);
      }
    }
    return outs;
  }

  EngineStats stats() const override {
    EngineStats st;
    st.running = static_cast<int>(running_.size());
    st.waiting = static_cast<int>(waiting_.size());
    st.kv_usage = num_blocks_ ? static_cast<double>(num_blocks_ - free_blocks_) / num_blocks_ : 0;
    st.kv_capacity_tokens = num_blocks_ * o_.block_size;
    st.num_preemptions = preemptions_;
    st.free_full_blocks = free_blocks_;
    return st;
  }

 private:
  static double Since(std::chrono::steady_clock::time_point t) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
  }

  bool Reserve(Seq* s, int64_t chunk) {
    const int64_t need = (s->computed + chunk + o_.block_size - 1) / o_.block_size - s->blocks;
    if (need > free_blocks_) return false;
    if (need > 0) {
      free_blocks_ -= need;
      s->blocks += need;
    }
    return true;
  }

  void Free(Seq* s) {
    free_blocks_ += s->blocks;
    s->blocks = 0;
    s->computed = 0;
  }

  void Preempt(Seq* s) {
    running_.erase(std::find(running_.begin(), running_.end(), s));
    Free(s);
    waiting_.push_front(s);
    ++preemptions_;
  }

  void Remove(Seq* s) {
    Free(s);
    running_.erase(std::remove(running_.begin(), running_.end(), s), running_.end());
    waiting_.erase(std::remove(waiting_.begin(), waiting_.end(), s), waiting_.end());
  }

  RequestOutput Sample(Seq& s) {
    int32_t tok = NextGreedy(s);
    if (!s.params.sampling.greedy() && tok != kFakeEos) {
      tok = static_cast<unsigned char>('a' + s.rng() % 26);
    }
    const int n_out = static_cast<int>(s.output.size()) + 1;
    const bool min_ok = n_out > s.params.min_tokens;
    if (tok == kFakeEos && (!min_ok || s.params.ignore_eos)) tok = 'e';
    s.output.push_back(tok);
    if (s.ttft_s == 0) s.ttft_s = Since(s.arrival);
    RequestOutput out;
    out.id = s.id;
    TokenOutput t;
    t.token = tok;
    if (s.params.logprobs >= 0) {
      t.logprob = -0.25f;
      for (int k = 0; k < s.params.logprobs; ++k) {
        t.top.push_back({static_cast<int32_t>('a' + k), -0.25f - k});
      }
    }
    out.tokens.push_back(t);
    FinishReason reason = FinishReason::kNone;
    if (tok == kFakeEos) {
      reason = FinishReason::kEos;
    } else {
      s.text += static_cast<char>(tok);
      const bool stop_id = std::find(s.params.stop_token_ids.begin(), s.params.stop_token_ids.end(),
                                     tok) != s.params.stop_token_ids.end();
      if (min_ok && stop_id) reason = FinishReason::kStop;
      for (const std::string& stop : s.params.stop) {
        if (!min_ok || reason != FinishReason::kNone) break;
        const size_t at = s.text.find(stop, s.sent > stop.size() ? s.sent - stop.size() : 0);
        if (at != std::string::npos) {
          s.text.resize(s.params.include_stop_str_in_output ? at + stop.size() : at);
          reason = FinishReason::kStop;
        }
      }
    }
    if (reason == FinishReason::kNone && n_out >= s.params.max_tokens)
      reason = FinishReason::kLength;
    // Hold back a possible stop-string prefix at the end, as the real engine does.
    size_t hold = 0;
    if (reason == FinishReason::kNone) {
      for (const std::string& stop : s.params.stop) {
        for (size_t k = std::min(stop.size() - 1, s.text.size()); k > hold; --k) {
          if (s.text.compare(s.text.size() - k, k, stop, 0, k) == 0) {
            hold = k;
            break;
          }
        }
      }
    }
    const size_t upto = std::max(s.sent, s.text.size() - hold);
    out.text =
        s.text.substr(std::min(s.sent, s.text.size()), upto - std::min(s.sent, s.text.size()));
    s.sent = upto;
    if (reason != FinishReason::kNone) return Finish(s, reason, "", &out);
    FillUsage(s, &out);  // as the real engine does on every output
    return out;
  }

  void FillUsage(const Seq& s, RequestOutput* out) const {
    out->prompt_tokens = static_cast<int>(s.prompt.size());
    out->completion_tokens = static_cast<int>(s.output.size());
    out->queue_time_s = std::max(0.0, s.queue_time_s);
    out->ttft_s = s.ttft_s;
  }

  RequestOutput Finish(Seq& s, FinishReason reason, const std::string& error,
                       RequestOutput* partial = nullptr) {
    RequestOutput out = partial ? std::move(*partial) : RequestOutput{};
    out.id = s.id;
    if (reason != FinishReason::kAbort && reason != FinishReason::kError &&
        s.sent < s.text.size()) {
      out.text += s.text.substr(s.sent);
      s.sent = s.text.size();
    }
    out.finished = true;
    out.finish_reason = reason;
    if (!error.empty()) out.error = absl::ResourceExhaustedError(error);
    FillUsage(s, &out);
    return out;
  }

  EngineOptions o_;
  FakeEngineOptions f_;
  ModelConfig config_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<ChatTemplate> chat_template_;
  absl::Status chat_template_status_;
  int max_model_len_ = 0;
  int64_t num_blocks_ = 0, free_blocks_ = 0, preemptions_ = 0, steps_ = 0;
  std::map<RequestId, std::unique_ptr<Seq>> seqs_;
  std::vector<Seq*> running_;
  std::deque<Seq*> waiting_;
};

}  // namespace

std::unique_ptr<Tokenizer> MakeFakeTokenizer() { return std::make_unique<FakeTokenizer>(); }

absl::StatusOr<std::unique_ptr<Engine>> CreateFakeEngine(const EngineOptions& options,
                                                         const FakeEngineOptions& fake) {
  if (options.block_size <= 0) return absl::InvalidArgumentError("block_size: must be > 0");
  return std::unique_ptr<Engine>(new FakeEngine(options, fake));
}

}  // namespace leank::testing
