# cpattn_exports.cmake — run at build time (cmake -P): write the linker
# version script of libcpattn.so from the public header, so that the shared
# library exports exactly the functions include/cpattn.h declares and hides
# everything else (the model, the tools' helpers, the internals), with no
# export macro in the header.
#
#   cmake -DHEADER=include/cpattn.h -DOUT=build/cpattn.map -DVERSION_NODE=CPATTN_0.1 -P ...
#
# A declaration is an identifier cpa_* followed by "(" outside comments;
# the comments are removed first, since they quote calls ("cpa_trace_end(0,
# ...)") and internal names.  Macros are upper case and do not match.
cmake_minimum_required(VERSION 3.18)
file(READ "${HEADER}" text)
# Remove /* ... */ comments (CMake regexes have no lazy quantifier: walk them).
set(code "")
while(TRUE)
  string(FIND "${text}" "/*" open)
  if(open EQUAL -1)
    string(APPEND code "${text}")
    break()
  endif()
  string(SUBSTRING "${text}" 0 ${open} before)
  string(APPEND code "${before} ")
  math(EXPR after "${open} + 2")
  string(SUBSTRING "${text}" ${after} -1 text)
  string(FIND "${text}" "*/" close)
  if(close EQUAL -1)
    message(FATAL_ERROR "${HEADER}: unterminated comment")
  endif()
  math(EXPR after "${close} + 2")
  string(SUBSTRING "${text}" ${after} -1 text)
endwhile()
# And // comments.
string(REGEX REPLACE "//[^\n]*" "" code "${code}")
string(REGEX MATCHALL "cpa_[a-z0-9_]+[ \t\n]*\\(" calls "${code}")
set(names "")
foreach(c IN LISTS calls)
  string(REGEX REPLACE "[ \t\n]*\\($" "" n "${c}")
  list(APPEND names "${n}")
endforeach()
list(REMOVE_DUPLICATES names)
list(SORT names)
list(LENGTH names count)
if(count LESS 10)
  message(FATAL_ERROR "${HEADER}: found only ${count} public functions; the parser is broken")
endif()
set(map "/* Generated from ${HEADER} by cmake/cpattn_exports.cmake: do not edit. */\n")
string(APPEND map "${VERSION_NODE} {\n  global:\n")
foreach(n IN LISTS names)
  string(APPEND map "    ${n};\n")
endforeach()
string(APPEND map "  local:\n    *;\n};\n")
# Only touch the file when it changes, so the library relinks only then.
if(EXISTS "${OUT}")
  file(READ "${OUT}" old)
  if(old STREQUAL map)
    return()
  endif()
endif()
file(WRITE "${OUT}" "${map}")
