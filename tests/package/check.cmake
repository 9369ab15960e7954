# `cmake --install` and find_package(coil), end to end: installs the build BUILD_DIR into a
# scratch prefix, configures, builds and runs the project beside this file against it, and runs
# the installed coil. Then the version's fallback outside a git checkout (cmake/git_commit.cmake).
#   cmake -DBUILD_DIR=... -DSOURCE_DIR=... -DWORK_DIR=... -DGENERATOR=... -DCXX=... \
#         -DVERSION=... -DGIT_COMMIT=... -P check.cmake
set(prefix ${WORK_DIR}/prefix)
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})

execute_process(COMMAND ${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${prefix} OUTPUT_QUIET COMMAND_ERROR_IS_FATAL ANY)
foreach(header core/tensor.h kernels/matmul.h kernels/cpu/parallel.h autograd/functions/matmul.h train/trainer.h)
  if(NOT EXISTS ${prefix}/include/coil/${header})
    message(FATAL_ERROR "the install lacks include/coil/${header}")
  endif()
endforeach()
file(GLOB_RECURSE library ${prefix}/lib*/libcoil.a)
file(GLOB_RECURSE package ${prefix}/lib*/coilConfig.cmake)
if(NOT library OR NOT package)
  message(FATAL_ERROR "the install lacks libcoil.a or coilConfig.cmake: '${library}' '${package}'")
endif()

execute_process(COMMAND ${CMAKE_COMMAND} -S ${SOURCE_DIR}/tests/package -B ${WORK_DIR}/build -G ${GENERATOR}
                        -DCMAKE_CXX_COMPILER=${CXX} -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH=${prefix}
                OUTPUT_QUIET COMMAND_ERROR_IS_FATAL ANY)
execute_process(COMMAND ${CMAKE_COMMAND} --build ${WORK_DIR}/build OUTPUT_QUIET COMMAND_ERROR_IS_FATAL ANY)
execute_process(COMMAND ${WORK_DIR}/build/consumer ${WORK_DIR} OUTPUT_VARIABLE ran COMMAND_ERROR_IS_FATAL ANY)
set(version ${VERSION})
if(GIT_COMMIT)
  set(version ${VERSION}+${GIT_COMMIT})
endif()
if(NOT ran STREQUAL "coil ${version}: 7 10 15 22, checkpoint step 3 of mamba-tiny\n")
  message(FATAL_ERROR "the consumer printed '${ran}'")
endif()
execute_process(COMMAND ${prefix}/bin/coil --version OUTPUT_VARIABLE ran COMMAND_ERROR_IS_FATAL ANY)
string(FIND "${ran}" "coil ${version}\n" at)
if(NOT at EQUAL 0)
  message(FATAL_ERROR "the installed coil --version printed '${ran}'")
endif()

# The commit: the source's own when it is a git checkout (12 hex digits; the source may have
# moved on since it was configured); none for a directory that is not the top of a work tree
# (WORK_DIR may lie inside one) and none when git cannot run.
include(${SOURCE_DIR}/cmake/git_commit.cmake)
coil_git_commit(${SOURCE_DIR} commit)
string(LENGTH "${commit}" digits)
if(GIT_COMMIT AND NOT (digits EQUAL 12 AND commit MATCHES "^[0-9a-f]+$"))
  message(FATAL_ERROR "coil_git_commit gives '${commit}' for the source, a git checkout")
endif()
coil_git_commit(${WORK_DIR} commit)
if(NOT commit STREQUAL "")
  message(FATAL_ERROR "coil_git_commit gives '${commit}' for ${WORK_DIR}, not a git checkout")
endif()
set(GIT_EXECUTABLE ${WORK_DIR}/no-such-git)
coil_git_commit(${SOURCE_DIR} commit)
if(NOT commit STREQUAL "")
  message(FATAL_ERROR "coil_git_commit gives '${commit}' without a git program")
endif()
message(STATUS "installed, found, built against and ran coil ${version} from ${prefix}")
