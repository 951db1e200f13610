// The token stream a measurement runs on: ids from a file (for models without a tokenizer,
// such as the test fixtures) or a text encoded with the model's own tokenizer.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ds4::gguf {
class File;
}

namespace ds4::quality {

// Whitespace-separated decimal ids; a leading '@' on the path is accepted (--tokens @FILE).
std::vector<int32_t> read_token_file(const std::string& path);

// The file's text encoded with the GGUF's tokenizer as plain text (no special tokens, no BOS):
// perplexity of a document, not of a chat prompt. Throws a message saying to use --tokens when
// the model has no tokenizer.
std::vector<int32_t> tokenize_text_file(const gguf::File& model, const std::string& path);

}  // namespace ds4::quality
