# In pip builds (SKBUILD) pybind11 lives in pip's isolated build environment, a new
# temporary folder on every `pip install .`; its include directory, and with it the
# extension's compile commands, would change every time, and ninja would recompile
# python/src/*.cpp though nothing changed. This points pybind11's headers target at a copy
# in the build tree instead: a fixed path, where a header is rewritten only when its
# content differs (pip gives the installed headers new timestamps each time), so unchanged
# headers stay up to date; another pybind11 version replaces the copy (and the extension
# is recompiled, as it should be).
if(TARGET pybind11::pybind11_headers)
  get_target_property(_msdacore_pybind11_include pybind11::pybind11_headers
                      INTERFACE_INCLUDE_DIRECTORIES)
  set(_msdacore_pybind11_copy "${CMAKE_BINARY_DIR}/pybind11-include")
  set(_msdacore_pybind11_stamp "${_msdacore_pybind11_copy}/.version")
  set(_msdacore_pybind11_old "")
  if(EXISTS "${_msdacore_pybind11_stamp}")
    file(READ "${_msdacore_pybind11_stamp}" _msdacore_pybind11_old)
  endif()
  if(NOT _msdacore_pybind11_old STREQUAL "${pybind11_VERSION}")
    file(REMOVE_RECURSE "${_msdacore_pybind11_copy}")
  endif()
  if(IS_DIRECTORY "${_msdacore_pybind11_include}/pybind11")
    file(GLOB_RECURSE _msdacore_pybind11_headers RELATIVE "${_msdacore_pybind11_include}"
         "${_msdacore_pybind11_include}/pybind11/*")
    foreach(_msdacore_header IN LISTS _msdacore_pybind11_headers)
      get_filename_component(_msdacore_header_dir "${_msdacore_pybind11_copy}/${_msdacore_header}"
                             DIRECTORY)
      file(MAKE_DIRECTORY "${_msdacore_header_dir}")
      file(COPY_FILE "${_msdacore_pybind11_include}/${_msdacore_header}"
           "${_msdacore_pybind11_copy}/${_msdacore_header}" ONLY_IF_DIFFERENT)
    endforeach()
    file(WRITE "${_msdacore_pybind11_stamp}" "${pybind11_VERSION}")
    set_property(TARGET pybind11::pybind11_headers PROPERTY
                 INTERFACE_INCLUDE_DIRECTORIES "${_msdacore_pybind11_copy}")
  endif()
endif()
