# Compiler flags for nybble's own targets, the ISA flags of the per-ISA kernel directories, and
# CUDA detection.

# Bit-exactness needs every fp32 operation rounded where the source rounds it: no FMA contraction
# (Note [Nested scale rounding] in cpu/kernels.hpp).
set(NYBBLE_WARNINGS -Wall -Wextra -Wpedantic -Wshadow)
if(NYBBLE_WERROR)
  list(APPEND NYBBLE_WARNINGS -Werror)
endif()
set(NYBBLE_CXX_FLAGS -ffp-contract=off -fno-math-errno)

set(NYBBLE_CUDA_WARNINGS -Xcompiler=-Wall,-Wextra)
if(NYBBLE_WERROR)
  list(APPEND NYBBLE_CUDA_WARNINGS -Xcompiler=-Werror --Werror=all-warnings)
endif()

function(nybble_target_flags target)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:${NYBBLE_WARNINGS} ${NYBBLE_CXX_FLAGS}>
    $<$<COMPILE_LANGUAGE:CUDA>:${NYBBLE_CUDA_WARNINGS} -fmad=false>)
endfunction()

set(NYBBLE_X86 OFF)
if(CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64)$")
  set(NYBBLE_X86 ON)
endif()
set(NYBBLE_AVX2_FLAGS -mavx2 -mfma -mf16c)
set(NYBBLE_AVX512_FLAGS -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx2 -mfma -mf16c)

set(NYBBLE_HAVE_CUDA OFF)
if(NOT NYBBLE_CUDA STREQUAL "OFF")
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      set(CMAKE_CUDA_ARCHITECTURES 80 90)
    endif()
    # CMake 3.25 does not know nvcc's C++20 flag; the device code needs only C++17.
    set(CMAKE_CUDA_STANDARD 17)
    set(CMAKE_CUDA_STANDARD_REQUIRED ON)
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    set(NYBBLE_HAVE_CUDA ON)
  elseif(NYBBLE_CUDA STREQUAL "ON")
    message(FATAL_ERROR "NYBBLE_CUDA=ON but no CUDA compiler (nvcc) was found")
  endif()
endif()
message(STATUS "nybble: CUDA backend ${NYBBLE_HAVE_CUDA}; x86 SIMD kernels ${NYBBLE_X86}")
