#include "engine/cuda/gpu_sampler.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace leank::cuda {
namespace {

namespace km = kernels::model;

constexpr size_t kAlign = 256;
size_t AlignUp(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

}  // namespace

GpuSampler::~GpuSampler() {
  if (uploaded_) cudaEventDestroy(uploaded_);
}

void GpuSampler::BuildEntries(const DeviceSample& s, int64_t vocab) {
  if (static_cast<int64_t>(slot_.size()) < vocab) slot_.assign(vocab, -1);
  const size_t begin = entries_.size();
  auto mark = [&](int32_t t, int32_t flags) {
    if (t < 0 || t >= vocab) return;
    int32_t& slot = slot_[t];
    if (slot < 0) {
      slot = static_cast<int32_t>(entries_.size() - begin);
      entries_.push_back({t, 0});
    }
    km::SampleEntry& e = entries_[begin + slot];
    // Low bits are flags (or-ed), the rest a count (added).
    const int32_t low = (1 << km::kSampleCountShift) - 1;
    e.flags = ((e.flags | flags) & low) + ((e.flags & ~low) + (flags & ~low));
  };
  for (int32_t t : s.banned) mark(t, km::kSampleBanned);
  if (s.params.repetition_penalty != 1.0f) {
    for (int32_t t : s.prompt) mark(t, km::kSampleSeen);
    for (int32_t t : s.output) mark(t, km::kSampleSeen);
  }
  if (s.params.presence_penalty != 0.0f || s.params.frequency_penalty != 0.0f) {
    for (int32_t t : s.output) mark(t, 1 << km::kSampleCountShift);
  }
  for (size_t i = begin; i < entries_.size(); ++i) slot_[entries_[i].token] = -1;
}

absl::Status GpuSampler::Enqueue(float* logits, int64_t vocab,
                                 std::span<const DeviceSample* const> samples,
                                 cudaStream_t stream) {
  rows_ = static_cast<int64_t>(samples.size());
  sampled_.assign(rows_, 0);
  params_.clear();
  entries_.clear();
  for (int64_t r = 0; r < rows_; ++r) {
    const DeviceSample* s = samples[r];
    if (!s) continue;
    sampled_[r] = 1;
    km::SampleRowParams p;
    p.seed = s->seed;
    p.step = s->step;
    p.row = static_cast<int32_t>(r);
    p.temperature = s->params.temperature;
    p.top_k = s->params.top_k;
    p.top_p = s->params.top_p;
    p.min_p = s->params.min_p;
    p.repetition_penalty = s->params.repetition_penalty;
    p.presence_penalty = s->params.presence_penalty;
    p.frequency_penalty = s->params.frequency_penalty;
    p.entry_begin = static_cast<int32_t>(entries_.size());
    BuildEntries(*s, vocab);
    p.num_entries = static_cast<int32_t>(entries_.size()) - p.entry_begin;
    params_.push_back(p);
  }
  if (params_.empty()) return absl::OkStatus();

  const size_t params_bytes = AlignUp(params_.size() * sizeof(km::SampleRowParams));
  const size_t entry_bytes = entries_.size() * sizeof(km::SampleEntry);
  const size_t upload_bytes = params_bytes + entry_bytes;
  const size_t saved_bytes = std::max<size_t>(1, entries_.size()) * sizeof(float);
  const size_t result_bytes = AlignUp(rows_ * sizeof(int32_t)) + rows_ * sizeof(float);

  // The previous step's upload must be done reading staging_ before it is rewritten; and
  // nothing of it may still run when a buffer is replaced.
  if (uploaded_) {
    LEANK_CUDA_CHECK(cudaEventSynchronize(uploaded_));
  } else {
    LEANK_CUDA_CHECK(cudaEventCreateWithFlags(&uploaded_, cudaEventDisableTiming));
  }
  if (upload_bytes > upload_.bytes() || saved_bytes > saved_.bytes() ||
      result_bytes > results_.bytes() || upload_bytes > staging_cap_ ||
      result_bytes > results_host_cap_) {
    LEANK_CUDA_CHECK(cudaStreamSynchronize(stream));
    auto grow = [](DeviceBuffer& b, size_t bytes, const char* what) -> absl::Status {
      if (bytes <= b.bytes()) return absl::OkStatus();
      return b.Allocate(AlignUp(bytes * 3 / 2), what);
    };
    if (auto st = grow(upload_, upload_bytes, "sampling parameters"); !st.ok()) return st;
    if (auto st = grow(saved_, saved_bytes, "sampling scratch"); !st.ok()) return st;
    if (auto st = grow(results_, result_bytes, "sampled tokens"); !st.ok()) return st;
    if (upload_bytes > staging_cap_) {
      staging_cap_ = AlignUp(upload_bytes * 3 / 2);
      staging_.Reserve(staging_cap_);
    }
    if (result_bytes > results_host_cap_) {
      results_host_cap_ = AlignUp(result_bytes * 3 / 2);
      results_host_.Reserve(results_host_cap_);
    }
  }

  char* st = staging_.as<char>();
  std::memcpy(st, params_.data(), params_.size() * sizeof(km::SampleRowParams));
  if (entry_bytes) std::memcpy(st + params_bytes, entries_.data(), entry_bytes);
  LEANK_CUDA_CHECK(
      cudaMemcpyAsync(upload_.as<char>(), st, upload_bytes, cudaMemcpyHostToDevice, stream));
  LEANK_CUDA_CHECK(cudaEventRecord(uploaded_, stream));

  char* dev = upload_.as<char>();
  int32_t* tokens = results_.as<int32_t>();
  float* logprobs = reinterpret_cast<float*>(results_.as<char>() + AlignUp(rows_ * 4));
  km::SampleLogits(logits, static_cast<int>(vocab),
                   reinterpret_cast<const km::SampleRowParams*>(dev),
                   static_cast<int>(params_.size()),
                   reinterpret_cast<const km::SampleEntry*>(dev + params_bytes), saved_.as<float>(),
                   tokens, logprobs, stream);
  LEANK_CUDA_CHECK(cudaMemcpyAsync(results_host_.as<char>(), results_.as<char>(), result_bytes,
                                   cudaMemcpyDeviceToHost, stream));
  return absl::OkStatus();
}

void GpuSampler::Results(std::vector<SampledToken>* out) const {
  out->assign(rows_, SampledToken{-1, 0.0f});
  if (params_.empty()) return;
  const int32_t* tokens = results_host_.as<int32_t>();
  const float* logprobs =
      reinterpret_cast<const float*>(results_host_.as<char>() + AlignUp(rows_ * 4));
  for (int64_t r = 0; r < rows_; ++r) {
    if (sampled_[r]) (*out)[r] = {tokens[r], logprobs[r]};
  }
}

}  // namespace leank::cuda
