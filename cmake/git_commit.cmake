# coil_git_commit(SOURCE_DIR OUT): the abbreviated commit (12 hex digits) that SOURCE_DIR is
# checked out at, or "" when it is not the top of a git work tree (a release tarball, even one
# unpacked inside another repository) or git is missing.
function(coil_git_commit source_dir out)
  set(commit "")
  find_package(Git QUIET)
  if(GIT_EXECUTABLE)
    execute_process(COMMAND "${GIT_EXECUTABLE}" -C "${source_dir}" rev-parse --show-toplevel --short=12 HEAD
                    RESULT_VARIABLE failed OUTPUT_VARIABLE lines ERROR_QUIET OUTPUT_STRIP_TRAILING_WHITESPACE)
    if(NOT failed)
      string(REPLACE "\n" ";" lines "${lines}")
      list(GET lines 0 top)
      list(GET lines 1 hash)
      file(REAL_PATH "${top}" top)
      file(REAL_PATH "${source_dir}" source)
      if(top STREQUAL source)
        set(commit "${hash}")
      endif()
    endif()
  endif()
  set(${out} "${commit}" PARENT_SCOPE)
endfunction()
