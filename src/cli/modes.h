// Internal to src/cli: the two modes of run() and the Ctrl+C plumbing they share.
#pragma once

#include <atomic>

#include "cli/chat_session.h"

namespace ds4::cli {

// Set by SIGINT; generation polls it (GenerateOptions::cancel) and stops within one step.
std::atomic<bool>& interrupt_flag();
// Installs the SIGINT handler (without SA_RESTART, so a blocking read returns EINTR).
void install_interrupt_handler();

int run_interactive(const LoadedModel& m, const CliOptions& o, ChatSession& chat);

// The closing line of a turn on stderr: prompt and generation speed.
void print_speed(const gen::GenerateResult& r);

}  // namespace ds4::cli
