# `cmake --install`: into the Python environment of Python3_EXECUTABLE,
#   1. llama-cpp-python's Python package from the same sdist, its native build off
#      (CMAKE_ARGS=-DLLAMA_BUILD=OFF): pip builds a wheel from a local folder, which it
#      never caches, so no earlier build can come back from pip's wheel cache;
#   2. the engine's libraries into <site-packages>/llama_cpp/lib, where the bindings load
#      them, after removing whatever libraries were there (an older build's CPU variants);
#   3. edge-lora-engine.json beside them: how they were built (`edge-lora doctor` reads it).
# (EDGE_LORA_INSTALL_LIBDIR, _platlib: set by CMakeLists.txt before llama.cpp is configured)
# llama.cpp's own install rules are not used (EXCLUDE_FROM_ALL); keep any stray one local
set(CMAKE_INSTALL_PREFIX "${CMAKE_BINARY_DIR}/_unused_prefix" CACHE PATH "" FORCE)

foreach(t IN LISTS EDGE_LORA_ENGINE_TARGETS)
    set_target_properties(${t} PROPERTIES PUBLIC_HEADER "")  # headers are not installed
    if(APPLE)
        set_target_properties(${t} PROPERTIES INSTALL_RPATH "@loader_path" BUILD_WITH_INSTALL_RPATH TRUE)
    elseif(UNIX)
        set_target_properties(${t} PROPERTIES INSTALL_RPATH "$ORIGIN" BUILD_WITH_INSTALL_RPATH TRUE)
    endif()
endforeach()

install(CODE "
    set(ENV{CMAKE_ARGS} \"-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF\")
    message(STATUS \"Installing llama-cpp-python ${EDGE_LORA_LLAMA_CPP_PYTHON_VERSION} (bindings only) into ${_platlib}\")
    execute_process(COMMAND \"${Python3_EXECUTABLE}\" -m pip install --quiet --no-deps --force-reinstall
                            \"${LLAMA_CPP_PYTHON_DIR}\" RESULT_VARIABLE rc)
    if(NOT rc EQUAL 0)
        message(FATAL_ERROR \"pip could not install the llama-cpp-python bindings\")
    endif()
    # its Python dependencies (numpy, jinja2, diskcache, typing-extensions); nothing is rebuilt
    execute_process(COMMAND \"${Python3_EXECUTABLE}\" -m pip install --quiet
                            \"llama-cpp-python==${EDGE_LORA_LLAMA_CPP_PYTHON_VERSION}\" RESULT_VARIABLE rc)
    if(NOT rc EQUAL 0)
        message(FATAL_ERROR \"pip could not install llama-cpp-python's dependencies\")
    endif()
    file(GLOB stale \"${EDGE_LORA_INSTALL_LIBDIR}/*ggml*\" \"${EDGE_LORA_INSTALL_LIBDIR}/*llama*\"
                    \"${EDGE_LORA_INSTALL_LIBDIR}/*mtmd*\" \"${EDGE_LORA_INSTALL_LIBDIR}/edge-lora-engine.json\")
    if(stale)
        file(REMOVE \${stale})
    endif()
")
install(TARGETS ${EDGE_LORA_ENGINE_TARGETS}
        LIBRARY DESTINATION "${EDGE_LORA_INSTALL_LIBDIR}"
        RUNTIME DESTINATION "${EDGE_LORA_INSTALL_LIBDIR}"
        ARCHIVE DESTINATION "${CMAKE_BINARY_DIR}/_unused_prefix/lib")

if(GGML_BACKEND_DL)
    set(_dl true)
else()
    set(_dl false)
endif()
string(REPLACE ";" "\", \"" _targets_json "${EDGE_LORA_ENGINE_TARGETS}")
if(EDGE_LORA_CPU STREQUAL "portable" AND _x86_64)
    string(REPLACE ";" "\", \"" _variants_json "${EDGE_LORA_CPU_VARIANTS}")
    set(_variants_json "[\"${_variants_json}\"]")
else()
    set(_variants_json "[]")
endif()
file(WRITE "${CMAKE_BINARY_DIR}/edge-lora-engine.json" "{
  \"built_by\": \"edge-lora CMakeLists.txt\",
  \"llama_cpp_python\": \"${EDGE_LORA_LLAMA_CPP_PYTHON_VERSION}\",
  \"sdist_sha256\": \"${EDGE_LORA_LLAMA_CPP_PYTHON_SHA256}\",
  \"backend\": \"${EDGE_LORA_BACKEND}\",
  \"cpu\": \"${EDGE_LORA_CPU}\",
  \"cpu_variants\": ${_variants_json},
  \"backend_dl\": ${_dl},
  \"libraries\": [\"${_targets_json}\"],
  \"system\": \"${CMAKE_SYSTEM_NAME} ${CMAKE_SYSTEM_PROCESSOR}\",
  \"compiler\": \"${CMAKE_CXX_COMPILER_ID} ${CMAKE_CXX_COMPILER_VERSION}\",
  \"build_type\": \"${CMAKE_BUILD_TYPE}\"
}
")
install(FILES "${CMAKE_BINARY_DIR}/edge-lora-engine.json" DESTINATION "${EDGE_LORA_INSTALL_LIBDIR}")
# also beside the built libraries, so a build used in place (LLAMA_CPP_LIB_PATH=build/.../bin) says what it is
file(MAKE_DIRECTORY "${CMAKE_BINARY_DIR}/bin")
file(COPY_FILE "${CMAKE_BINARY_DIR}/edge-lora-engine.json" "${CMAKE_BINARY_DIR}/bin/edge-lora-engine.json" ONLY_IF_DIFFERENT)
