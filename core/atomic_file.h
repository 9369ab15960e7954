// Files replaced whole and durably: the new content goes to "<path>.tmp", which is flushed,
// fsync'ed and renamed over path, and the folder is fsync'ed. A crash or kill at any moment
// leaves either the old file or the new one, never a torn or empty one.
#pragma once
#include <functional>
#include <ostream>
#include <string>

namespace coil {

// Calls `write` on the temporary file, then replaces `path` with it. A write that fails (disk
// full) is an error naming the file, and `path` is left as it was.
void replace_file(const std::string& path, const std::function<void(std::ostream&)>& write);
// The same with the whole new content at hand.
void replace_file(const std::string& path, const std::string& content);

// fsync of a file or (directory = true) a folder, so that a rename in it is durable.
void fsync_path(const std::string& path, bool directory);

}  // namespace coil
