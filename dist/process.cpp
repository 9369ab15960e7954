#include "dist/process.h"

#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>

#include "core/error.h"

extern char** environ;

namespace coil::dist {
namespace {

std::string name_of(const std::string& assignment) { return assignment.substr(0, assignment.find('=')); }

bool has_name(const std::vector<std::string>& assignments, const std::string& name) {
  for (const auto& a : assignments)
    if (name_of(a) == name) return true;
  return false;
}

// The parent's environment with options.env set and options.env_defaults filled in.
std::vector<std::string> child_environment(const ChildOptions& options) {
  std::vector<std::string> out;
  for (char** e = environ; *e; ++e)
    if (!has_name(options.env, name_of(*e))) out.push_back(*e);
  for (const auto& d : options.env_defaults)
    if (!has_name(out, name_of(d)) && !has_name(options.env, name_of(d))) out.push_back(d);
  out.insert(out.end(), options.env.begin(), options.env.end());
  return out;
}

std::vector<char*> pointers(const std::vector<std::string>& strings) {
  std::vector<char*> p;
  for (const auto& s : strings) p.push_back(const_cast<char*>(s.c_str()));
  p.push_back(nullptr);
  return p;
}

}  // namespace

pid_t start_child(const std::string& program, const std::vector<std::string>& args, const ChildOptions& options) {
  std::vector<std::string> argv_strings = {program};
  argv_strings.insert(argv_strings.end(), args.begin(), args.end());
  const std::vector<std::string> env_strings = child_environment(options);
  std::vector<char*> argv = pointers(argv_strings), envp = pointers(env_strings);
  const std::string cannot_run = "coil: cannot run " + program + "\n";
  const pid_t parent = getpid();
  std::fflush(stdout);
  std::fflush(stderr);
  pid_t pid = fork();
  COIL_CHECK(pid >= 0, "cannot start {}: fork failed", program);
  if (pid > 0) return pid;
  if (options.own_process_group) setpgid(0, 0);
  if (options.terminate_with_parent) {
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(128 + SIGTERM);
  }
  execve(program.c_str(), argv.data(), envp.data());
  ssize_t ignored = write(2, cannot_run.data(), cannot_run.size());
  (void)ignored;
  _exit(127);
}

int exit_status(int wait_status) {
  if (WIFEXITED(wait_status)) return WEXITSTATUS(wait_status);
  if (WIFSIGNALED(wait_status)) return 128 + WTERMSIG(wait_status);
  return 1;
}

SignalHandlerScope::SignalHandlerScope(void (*handler)(int)) {
  if (!handler) return;
  struct sigaction sa {};
  sa.sa_handler = handler;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, &old_int_);
  sigaction(SIGTERM, &sa, &old_term_);
  installed_ = true;
}

SignalHandlerScope::~SignalHandlerScope() {
  if (!installed_) return;
  sigaction(SIGINT, &old_int_, nullptr);
  sigaction(SIGTERM, &old_term_, nullptr);
}

}  // namespace coil::dist
