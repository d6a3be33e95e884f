# Locates libtorch. Order: an explicit Torch_DIR / CMAKE_PREFIX_PATH (e.g. an official
# libtorch archive), else the torch wheel in the project's .venv (scripts/setup.sh).
if(NOT Torch_DIR AND NOT DEFINED ENV{Torch_DIR})
  set(_rlhf_py "${CMAKE_SOURCE_DIR}/.venv/bin/python")
  if(EXISTS "${_rlhf_py}")
    execute_process(COMMAND "${_rlhf_py}" -c "import torch.utils; print(torch.utils.cmake_prefix_path)"
                    OUTPUT_VARIABLE _rlhf_torch_prefix OUTPUT_STRIP_TRAILING_WHITESPACE
                    RESULT_VARIABLE _rlhf_rc)
    if(_rlhf_rc EQUAL 0)
      list(APPEND CMAKE_PREFIX_PATH "${_rlhf_torch_prefix}")
      message(STATUS "libtorch from the venv: ${_rlhf_torch_prefix}")
    endif()
  endif()
endif()
# The PyPI wheel is built with CUDA; without a CUDA toolkit on the machine we still build
# for the CPU (libtorch loads CUDA lazily at run time when a GPU is present).
find_package(CUDAToolkit QUIET)
if(NOT CUDAToolkit_FOUND)
  set(CAFFE2_USE_CUDA OFF CACHE BOOL "" FORCE)
endif()
# We compile no CUDA code of our own; naming an arch list skips Caffe2's GPU-detection
# try_run, which fails on machines with nvcc but no GPU.
if(NOT DEFINED ENV{TORCH_CUDA_ARCH_LIST})
  set(ENV{TORCH_CUDA_ARCH_LIST} "8.0;9.0")
endif()

# The wheel's libtorch_cuda.so needs the CUDA/NCCL libraries of the wheel's nvidia-*
# packages; point the linker at them so it doesn't resolve to an older system NCCL.
function(rlhf_link_wheel_cuda_libs target)
  get_filename_component(_torch_lib_dir "${TORCH_LIBRARY}" DIRECTORY)
  file(GLOB _nv_dirs LIST_DIRECTORIES true "${_torch_lib_dir}/../../nvidia/*/lib")
  foreach(_d ${_nv_dirs})
    target_link_options(${target} PUBLIC "LINKER:-rpath-link,${_d}")
  endforeach()
endfunction()
