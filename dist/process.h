// Child processes and signals, for the commands that run other coil processes (`coil launch`
// starts ranks, `coil sweep` starts runs) and for the trainer's stop at a step boundary.
#pragma once
#include <signal.h>
#include <sys/types.h>

#include <string>
#include <vector>

namespace coil::dist {

struct ChildOptions {
  std::vector<std::string> env;           // "NAME=value", set in the child
  std::vector<std::string> env_defaults;  // "NAME=value", set only where the parent has no NAME
  bool own_process_group = false;         // a Ctrl-C at the terminal does not reach it directly
  bool terminate_with_parent = false;     // it gets SIGTERM when the parent dies
};

// Starts `program args...` (argv[0] is program). Everything is prepared before fork, so the
// child makes only async-signal-safe calls until exec; if exec fails it says so and exits 127.
pid_t start_child(const std::string& program, const std::vector<std::string>& args, const ChildOptions& options = {});

// A waitpid status as a shell reports it: the exit code, or 128 + the signal that ended it.
int exit_status(int wait_status);

// Installs handler for SIGINT and SIGTERM while it lives (nothing when handler is null) and
// restores the previous handlers after.
class SignalHandlerScope {
 public:
  explicit SignalHandlerScope(void (*handler)(int));
  ~SignalHandlerScope();
  SignalHandlerScope(const SignalHandlerScope&) = delete;
  SignalHandlerScope& operator=(const SignalHandlerScope&) = delete;

 private:
  bool installed_ = false;
  struct sigaction old_int_ {}, old_term_ {};
};

}  // namespace coil::dist
