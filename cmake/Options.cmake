# Build options. LEANK_CUDA defaults to ON when nvcc is found.
include(CheckLanguage)
check_language(CUDA)
if(CMAKE_CUDA_COMPILER)
  set(_leank_cuda_default ON)
else()
  set(_leank_cuda_default OFF)
endif()
option(LEANK_CUDA "Build the CUDA kernels and backend" ${_leank_cuda_default})
option(LEANK_BUILD_SERVER "Build the gRPC server and clients" ON)
option(LEANK_BUILD_TESTS "Build the tests" ON)
option(LEANK_BUILD_BENCH "Build the benchmarks" ON)
option(LEANK_NATIVE "Compile host code with -march=native (off for portable binaries)" OFF)

if(LEANK_CUDA)
  if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES OR CMAKE_CUDA_ARCHITECTURES STREQUAL "")
    set(CMAKE_CUDA_ARCHITECTURES 90a CACHE STRING "CUDA architectures" FORCE)
  endif()
  enable_language(CUDA)
  # CMake 3.25 knows no C++20 flag for nvcc, so .cu files are C++17 (they include only
  # kernel-internal headers; the public C++20 headers are compiled by the host compiler).
  set(CMAKE_CUDA_STANDARD 17)
  set(CMAKE_CUDA_STANDARD_REQUIRED ON)
endif()

# ccache when present: CI rebuilds from a fresh clone, the cache makes it cheap.
find_program(CCACHE_PROGRAM ccache)
if(CCACHE_PROGRAM)
  set(CMAKE_C_COMPILER_LAUNCHER ${CCACHE_PROGRAM})
  set(CMAKE_CXX_COMPILER_LAUNCHER ${CCACHE_PROGRAM})
  set(CMAKE_CUDA_COMPILER_LAUNCHER ${CCACHE_PROGRAM})
endif()

add_compile_options($<$<COMPILE_LANGUAGE:CXX>:-Wall> $<$<COMPILE_LANGUAGE:CXX>:-Wextra>
                    $<$<COMPILE_LANGUAGE:CXX>:-Wno-unused-parameter>)
if(LEANK_NATIVE)
  add_compile_options($<$<COMPILE_LANGUAGE:CXX>:-march=native>)
endif()
