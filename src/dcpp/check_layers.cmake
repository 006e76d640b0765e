# Checks what each part of the tree may #include, as the layer rules say
# (src/dcpp/CMakeLists.txt):
#   src/dcpp/<layer>/*      "dcpp/<other>/..." only for <other> at or below
#                           <layer> in DCPP_LAYERS (tests included, which
#                           the build does not check);
#   include/dcpp/*          only other public headers ("dcpp/<name>.h");
#   python/src/*, tools/dcpp/*
#                           public headers, engine entry points
#                           ("dcpp/engine/...") and tool functions
#                           ("dcpp/tools/...") only.
# Prints every violation as file:line and fails if there is any.
#
#   cmake -DDCPP_ROOT=<repo> -DDCPP_LAYERS=base,format,... -P check_layers.cmake
cmake_minimum_required(VERSION 3.20)
if(NOT DCPP_ROOT OR NOT DCPP_LAYERS)
  message(FATAL_ERROR "usage: cmake -DDCPP_ROOT=<repo> -DDCPP_LAYERS=<a,b,...> -P check_layers.cmake")
endif()
string(REPLACE "," ";" layers "${DCPP_LAYERS}")

# Files that break the rules today, each with the reason; remove an entry
# when the file is fixed.
set(known_exceptions
  # Writes and reads data files through the storage layer directly rather
  # than through an engine entry point.
  python/src/storage_bindings.cc
  # Writes the checksum sidecar for the dcpp.torch writer through
  # storage/checksum_file.h, dcp_layout.h and storage.h.
  python/src/module.cc
  # Builds torch's Metadata objects for dcpp.torch.FileSystemReader from the
  # safe pickle parser's graph (format/pickle.h, metadata_codec.h) and checks
  # chunk tiling with plan/validate.h.
  python/src/metadata_bindings.cc
  # Wrap their entry points in base/exception_barrier.h's CatchExceptions
  # (a public or engine-level barrier would serve them instead).
  python/src/errors.cc
  tools/dcpp/main.cc
  # A unit test of the storage layer that includes the engine's entry
  # points (engine/engine.h) and runs whole saves and loads: an integration
  # test, which belongs under tests/.
  src/dcpp/storage/storage_test.cc)

set(violations 0)

# Sets `out` to the targets of the #include "dcpp/..." (or <dcpp/...>)
# lines in `file`; none for a file in known_exceptions.
function(dcpp_includes file out)
  file(RELATIVE_PATH rel ${DCPP_ROOT} ${file})
  if(rel IN_LIST known_exceptions)
    set(${out} "" PARENT_SCOPE)
    return()
  endif()
  file(STRINGS ${file} lines REGEX "^[ \t]*#[ \t]*include[ \t]*[<\"]dcpp/")
  set(found)
  foreach(line IN LISTS lines)
    string(REGEX REPLACE "^[ \t]*#[ \t]*include[ \t]*[<\"]([^>\"]*)[>\"].*$" "\\1" target "${line}")
    list(APPEND found "${target}")
  endforeach()
  set(${out} "${found}" PARENT_SCOPE)
endfunction()

function(dcpp_violation file target why)
  file(RELATIVE_PATH rel ${DCPP_ROOT} ${file})
  message(STATUS "layer violation: ${rel} includes ${target}: ${why}")
  math(EXPR n "${violations} + 1")
  set(violations ${n} PARENT_SCOPE)
endfunction()

# The layer of an include target "dcpp/<layer>/...", or "" for a public
# header "dcpp/<name>.h".
function(dcpp_target_layer target out)
  if(target MATCHES "^dcpp/([^/]+)/")
    set(${out} "${CMAKE_MATCH_1}" PARENT_SCOPE)
  else()
    set(${out} "" PARENT_SCOPE)
  endif()
endfunction()

# src/dcpp/<layer>/
set(index 0)
foreach(layer IN LISTS layers)
  file(GLOB files ${DCPP_ROOT}/src/dcpp/${layer}/*.h ${DCPP_ROOT}/src/dcpp/${layer}/*.cc)
  if(NOT files)
    message(FATAL_ERROR "no sources in src/dcpp/${layer}: is DCPP_LAYERS right?")
  endif()
  foreach(file IN LISTS files)
    dcpp_includes(${file} targets)
    foreach(target IN LISTS targets)
      dcpp_target_layer(${target} to)
      if(to STREQUAL "")
        continue()
      endif()
      list(FIND layers ${to} to_index)
      if(to_index EQUAL -1)
        dcpp_violation(${file} ${target} "no layer '${to}'")
      elseif(to_index GREATER index)
        dcpp_violation(${file} ${target} "${layer} may not include the higher layer ${to}")
      endif()
    endforeach()
  endforeach()
  math(EXPR index "${index} + 1")
endforeach()
# Folders in src/dcpp that are not layers would escape the rules.
file(GLOB entries LIST_DIRECTORIES true ${DCPP_ROOT}/src/dcpp/*)
foreach(entry IN LISTS entries)
  get_filename_component(name ${entry} NAME)
  if(IS_DIRECTORY ${entry} AND NOT name IN_LIST layers)
    message(STATUS "layer violation: src/dcpp/${name} is not a layer in DCPP_LAYERS")
    math(EXPR violations "${violations} + 1")
  endif()
endforeach()

# include/dcpp/: public headers only.
file(GLOB files ${DCPP_ROOT}/include/dcpp/*.h)
foreach(file IN LISTS files)
  dcpp_includes(${file} targets)
  foreach(target IN LISTS targets)
    dcpp_target_layer(${target} to)
    if(NOT to STREQUAL "")
      dcpp_violation(${file} ${target} "a public header may include only public headers")
    endif()
  endforeach()
endforeach()

# python/src and tools/dcpp: public headers, engine and tools only.
file(GLOB files ${DCPP_ROOT}/python/src/*.h ${DCPP_ROOT}/python/src/*.cc
     ${DCPP_ROOT}/tools/dcpp/*.h ${DCPP_ROOT}/tools/dcpp/*.cc)
foreach(file IN LISTS files)
  dcpp_includes(${file} targets)
  foreach(target IN LISTS targets)
    dcpp_target_layer(${target} to)
    if(NOT to STREQUAL "" AND NOT to STREQUAL "engine" AND NOT to STREQUAL "tools")
      dcpp_violation(${file} ${target} "only public headers, engine and tools headers")
    endif()
  endforeach()
endforeach()

if(violations GREATER 0)
  message(FATAL_ERROR "${violations} layer violation(s)")
endif()
message(STATUS "layers: no violations")
