// Small synthetic models for tests and demos of the server (random weights: gibberish text, but
// every stage runs for real). Thin wrapper over synth/demo_model.h.
#pragma once

#include <string>

namespace ds4::server {

// tokenizer_json empty: a tiny shape (4 layers, 2 experts) with synth::byte_tokenizer(), which
// runs a decode step in about a millisecond; else the demo preset with the real V4 tokenizer.
void write_demo_model(const std::string& path, const std::string& tokenizer_json = {});

}  // namespace ds4::server
