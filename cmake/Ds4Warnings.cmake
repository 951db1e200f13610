# Warnings for project code only (third-party headers are included as SYSTEM by their targets).
function(ds4_warnings target)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wnon-virtual-dtor -Wno-unused-parameter>
    $<$<AND:$<COMPILE_LANGUAGE:CXX>,$<CXX_COMPILER_ID:GNU>>:-Wshadow=local>
    $<$<AND:$<COMPILE_LANGUAGE:CXX>,$<BOOL:${DS4_WERROR}>>:-Werror>)
endfunction()

# ds4_module(NAME DIR [DEPS ...]): a static library made of every .cpp in src/DIR.
# Each module is its own target so that a module can be built and tested alone.
function(ds4_module name dir)
  cmake_parse_arguments(M "" "" "DEPS;SOURCES" ${ARGN})
  file(GLOB srcs CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/${dir}/*.cpp)
  list(APPEND srcs ${M_SOURCES})
  if(NOT srcs)  # a layer with headers only (so far)
    add_library(${name} INTERFACE)
    target_include_directories(${name} INTERFACE ${PROJECT_SOURCE_DIR}/src)
    target_link_libraries(${name} INTERFACE ${M_DEPS})
    return()
  endif()
  add_library(${name} STATIC ${srcs})
  target_include_directories(${name} PUBLIC ${PROJECT_SOURCE_DIR}/src)
  target_link_libraries(${name} PUBLIC ${M_DEPS})
  ds4_warnings(${name})
endfunction()
