#include "tools/bench/workload.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <numeric>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace leank::bench {

absl::StatusOr<LengthDist> ParseLengthDist(const std::string& name) {
  if (name == "fixed") return LengthDist::kFixed;
  if (name == "uniform") return LengthDist::kUniform;
  if (name == "normal") return LengthDist::kNormal;
  return absl::InvalidArgumentError(
      absl::StrCat("length distribution '", name, "': expected fixed, uniform or normal"));
}

const char* LengthDistName(LengthDist d) {
  switch (d) {
    case LengthDist::kFixed:
      return "fixed";
    case LengthDist::kUniform:
      return "uniform";
    case LengthDist::kNormal:
      return "normal";
  }
  return "?";
}

int SampleLength(const LengthSpec& spec, std::mt19937_64& rng) {
  double v = spec.mean;
  switch (spec.dist) {
    case LengthDist::kFixed:
      break;
    case LengthDist::kUniform: {
      const int64_t half = static_cast<int64_t>(std::floor(spec.spread));
      std::uniform_int_distribution<int64_t> d(spec.mean - half, spec.mean + half);
      v = static_cast<double>(d(rng));
      break;
    }
    case LengthDist::kNormal: {
      std::normal_distribution<double> d(spec.mean, spec.spread > 0 ? spec.spread : 1e-9);
      v = std::round(d(rng));
      break;
    }
  }
  return static_cast<int>(std::max(1.0, v));
}

std::vector<BenchPrompt> MakeSyntheticPrompts(const std::vector<int32_t>& corpus, int64_t n,
                                              const LengthSpec& input, const LengthSpec& output,
                                              int max_model_len, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<BenchPrompt> prompts;
  prompts.reserve(n);
  for (int64_t i = 0; i < n; ++i) {
    BenchPrompt p;
    p.input_tokens = SampleLength(input, rng);
    p.output_tokens = SampleLength(output, rng);
    if (max_model_len > 0) {
      p.output_tokens = std::min(p.output_tokens, max_model_len - 1);
      p.input_tokens = std::max(1, std::min(p.input_tokens, max_model_len - p.output_tokens));
    }
    std::uniform_int_distribution<size_t> offset(0, corpus.size() - 1);
    size_t at = offset(rng);
    p.token_ids.resize(p.input_tokens);
    for (int32_t& id : p.token_ids) {
      id = corpus[at];
      at = (at + 1) % corpus.size();
    }
    prompts.push_back(std::move(p));
  }
  return prompts;
}

const std::string& SyntheticCorpusText() {
  // Original text written for this tool: varied vocabulary, numbers and punctuation so
  // that the token ids look like ordinary prose to the model.
  static const std::string* text = new std::string(
      "The lighthouse keeper wrote in his log every evening at seven. On the third of March "
      "he noted a fog so thick that the lamp seemed to hang in wet wool, and the foghorn "
      "answered a ship he never saw. Supplies came by boat twice a month: flour, lamp oil, "
      "tinned peaches, letters from his sister in the valley, and once a crate of books "
      "that nobody had ordered. He read them all, from a manual on bee keeping to a "
      "history of river trade, and he kept a list of words he had to look up.\n"
      "Engineers measure a server by two numbers that pull against each other: how fast a "
      "single request is answered, and how many requests are answered per second. Batching "
      "more work together raises the second and, past a point, hurts the first. A careful "
      "benchmark sends a known load, records when every piece of every answer arrives, and "
      "reports percentiles rather than a single average, because the slowest one in a "
      "hundred is what users remember.\n"
      "In the market square the baker opened at five, the fishmonger at six, and the "
      "clockmaker whenever he felt like it, which was usually after eleven. Children "
      "counted the pigeons on the fountain (there were 14, or 27 on Sundays) and argued "
      "about whether the statue was a general or a poet. It was, according to the plaque "
      "that nobody read, a gardener who had planted the chestnut trees along the canal in "
      "1873.\n"
      "To make bread, mix 500 grams of flour with 350 grams of water, 10 grams of salt and "
      "a little yeast; knead for ten minutes, let it rise for two hours, shape it, let it "
      "rise again, and bake at 230 degrees for about forty minutes until the crust sounds "
      "hollow when tapped. Patience matters more than the recipe.\n"
      "The committee met on Thursday to discuss the budget, the new bicycle lanes, and a "
      "complaint about the church bells. After three hours they agreed on the lanes, "
      "postponed the budget, and formed a subcommittee on bells.\n");
  return *text;
}

namespace {

bool IsUser(const std::string& who) { return who == "human" || who == "user"; }
bool IsAssistant(const std::string& who) {
  return who == "gpt" || who == "assistant" || who == "chatgpt" || who == "bard" || who == "model";
}

struct Conversation {
  std::string system;
  std::string prompt;
  std::string reply;
  int output_len = 0;  // "output_len" when the row gives one
};

// The first user turn and the reply after it; false when the row has none.
bool ExtractConversation(const nlohmann::json& row, Conversation* c) {
  if (!row.is_object()) return false;
  if (row.contains("prompt") && row["prompt"].is_string()) {
    c->prompt = row["prompt"].get<std::string>();
    if (row.contains("output_len") && row["output_len"].is_number_integer()) {
      c->output_len = row["output_len"].get<int>();
    }
    if (row.contains("completion") && row["completion"].is_string()) {
      c->reply = row["completion"].get<std::string>();
    }
    return true;
  }
  const char* list_key = row.contains("conversations") ? "conversations" : "messages";
  if (!row.contains(list_key) || !row[list_key].is_array()) return false;
  const char* who_key = std::string(list_key) == "conversations" ? "from" : "role";
  const char* text_key = std::string(list_key) == "conversations" ? "value" : "content";
  bool have_prompt = false;
  for (const nlohmann::json& turn : row[list_key]) {
    if (!turn.is_object() || !turn.contains(who_key) || !turn.contains(text_key)) continue;
    if (!turn[who_key].is_string() || !turn[text_key].is_string()) continue;
    const std::string who = turn[who_key].get<std::string>();
    const std::string text = turn[text_key].get<std::string>();
    if (!have_prompt) {
      if (who == "system") c->system = text;
      if (IsUser(who)) {
        c->prompt = text;
        have_prompt = true;
      }
    } else if (IsAssistant(who)) {
      c->reply = text;
      return true;
    }
  }
  return false;
}

}  // namespace

absl::StatusOr<std::vector<BenchPrompt>> LoadConversations(const std::string& path,
                                                           const DatasetOptions& options,
                                                           const TokenCounter& count_tokens) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string data = ss.str();
  std::vector<nlohmann::json> rows;
  const size_t first = data.find_first_not_of(" \t\r\n");
  if (first != std::string::npos && data[first] == '[') {
    nlohmann::json all = nlohmann::json::parse(data, nullptr, /*allow_exceptions=*/false);
    if (all.is_discarded() || !all.is_array()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": not a valid JSON array"));
    }
    for (nlohmann::json& r : all) rows.push_back(std::move(r));
  } else {
    std::istringstream lines(data);
    std::string line;
    for (int lineno = 1; std::getline(lines, line); ++lineno) {
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      nlohmann::json r = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (r.is_discarded()) {
        return absl::InvalidArgumentError(absl::StrCat(path, ":", lineno, ": invalid JSON"));
      }
      rows.push_back(std::move(r));
    }
  }
  std::vector<size_t> order(rows.size());
  std::iota(order.begin(), order.end(), 0);
  if (options.shuffle) {
    std::mt19937_64 rng(options.seed);
    std::shuffle(order.begin(), order.end(), rng);
  }
  std::vector<BenchPrompt> prompts;
  for (size_t idx : order) {
    if (static_cast<int64_t>(prompts.size()) >= options.max_prompts) break;
    Conversation c;
    if (!ExtractConversation(rows[idx], &c)) continue;
    // An empty first user turn asks nothing (and as text the server refuses it, which
    // would end the whole load): skipped like any prompt under 4 tokens.
    if (c.prompt.empty()) continue;
    BenchPrompt p;
    if (options.as_messages) {
      if (!c.system.empty()) p.messages.emplace_back("system", c.system);
      p.messages.emplace_back("user", c.prompt);
    } else {
      p.text = c.system.empty() ? c.prompt : c.system + "\n\n" + c.prompt;
    }
    // Counted as sent, so that input_tokens is what the server will see.
    absl::StatusOr<int> in_len = count_tokens(p, /*add_special_tokens=*/true);
    if (!in_len.ok()) return in_len.status();
    int out_len = options.fixed_output_len > 0 ? options.fixed_output_len : c.output_len;
    if (out_len <= 0) {
      if (c.reply.empty()) continue;
      BenchPrompt reply;
      reply.text = c.reply;
      absl::StatusOr<int> n = count_tokens(reply, /*add_special_tokens=*/false);
      if (!n.ok()) return n.status();
      out_len = *n;
    }
    // Too short to mean anything (vLLM's filter); a --dataset-output-len is the user's call.
    if (*in_len < 4 || (options.fixed_output_len <= 0 && out_len < 4)) continue;
    // vLLM's caps (prompt > 1024, prompt + output > 2048 tokens by default), so that a
    // ShareGPT run samples the same population as benchmark_serving's.
    if (options.max_input_len > 0 && *in_len > options.max_input_len) continue;
    if (options.max_total_len > 0 && *in_len + out_len > options.max_total_len) continue;
    if (options.max_model_len > 0 && *in_len + out_len > options.max_model_len) continue;
    p.input_tokens = *in_len;
    p.output_tokens = out_len;
    prompts.push_back(std::move(p));
  }
  if (prompts.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path,
                     ": no usable conversations (need a user turn and a reply, each of "
                     ">= 4 tokens, within the --dataset-max-input-len / --dataset-max-total-len "
                     "caps and max_model_len)"));
  }
  return prompts;
}

}  // namespace leank::bench
