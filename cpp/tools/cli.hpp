// tools/cli.hpp — the `nybble` command: quantize, inspect and verify safetensors checkpoints.
//
// Each subcommand takes its arguments (without the program and subcommand names), writes its
// report to `out` and progress and errors to `err`, and returns the exit status: 0 success,
// 1 failure (an error, or problems `verify` found), 2 a mistake in the command line. The work is
// the library's (io/checkpoint_*.hpp); this layer parses, prints and reports.
#pragma once

#include <functional>
#include <ostream>
#include <string>
#include <vector>

namespace nybble::cli {

// `nybble ARGS...` (ARGS[0] is the subcommand).
int run(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);

int quantize_command(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);
int inspect_command(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);
int verify_command(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);

// Runs a subcommand's body and turns what it throws into a message on err and an exit status:
// UsageError -> 2 (with a pointer to --help), any other exception -> 1.
int report_errors(const std::string& command, std::ostream& err, const std::function<int()>& body);

}  // namespace nybble::cli
