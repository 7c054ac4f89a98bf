# x86-64 portable CPU build: ggml's dynamically loaded CPU variants (GGML_BACKEND_DL), only
# those in EDGE_LORA_CPU_VARIANTS.
#
# ggml's GGML_CPU_ALL_VARIANTS adds a fixed list of variants (ggml/src/CMakeLists.txt); each
# goes through ggml_add_cpu_backend_variant_impl(tag). Rather than patch the vendored file,
# the first time a variant is declared (ggml sets GGML_CPU_TAG_NAME) this wraps that
# function with one that skips tags not asked for. CMake keeps the wrapped definition as
# _ggml_add_cpu_backend_variant_impl, and the wrapper runs in ggml's own directory scope,
# so ggml's relative source paths still resolve. edge_lora_check_cpu_variants() then
# verifies the outcome, so a change in ggml's CMake cannot slip an unwanted variant in.
set(_EDGE_LORA_AMX_VARIANTS sapphirerapids)

function(edge_lora_select_cpu_variants variants)
    foreach(v IN LISTS variants)
        if(v IN_LIST _EDGE_LORA_AMX_VARIANTS)
            message(FATAL_ERROR "CPU variant '${v}' uses AMX, whose ggml path faults (SIGILL) on Linux hosts "
                                "that advertise AMX; leave it out of EDGE_LORA_CPU_VARIANTS")
        endif()
    endforeach()
    if(NOT variants)
        message(FATAL_ERROR "EDGE_LORA_CPU_VARIANTS is empty")
    endif()
    set_property(GLOBAL PROPERTY EDGE_LORA_CPU_VARIANTS "${variants}")
    _force(GGML_BACKEND_DL ON)
    _force(GGML_CPU_ALL_VARIANTS ON)
    _force(GGML_NATIVE OFF)
    variable_watch(GGML_CPU_TAG_NAME _edge_lora_wrap_cpu_variant_impl)
endfunction()

function(_edge_lora_wrap_cpu_variant_impl var access value)
    get_property(wrapped GLOBAL PROPERTY EDGE_LORA_CPU_VARIANT_WRAPPED)
    if(wrapped OR NOT access STREQUAL "MODIFIED_ACCESS")
        return()
    endif()
    if(NOT COMMAND ggml_add_cpu_backend_variant_impl)
        message(FATAL_ERROR "ggml declared a CPU variant before defining ggml_add_cpu_backend_variant_impl: "
                            "its CMake changed, update cmake/CpuVariants.cmake")
    endif()
    set_property(GLOBAL PROPERTY EDGE_LORA_CPU_VARIANT_WRAPPED TRUE)
    function(ggml_add_cpu_backend_variant_impl tag_name)
        get_property(wanted GLOBAL PROPERTY EDGE_LORA_CPU_VARIANTS)
        if(tag_name IN_LIST wanted)
            _ggml_add_cpu_backend_variant_impl(${tag_name})
        else()
            message(STATUS "edge-lora: skipping CPU variant ${tag_name}")
        endif()
    endfunction()
endfunction()

function(edge_lora_check_cpu_variants variants)
    set(built "")
    get_property(all CACHE GGML_AVAILABLE_BACKENDS PROPERTY VALUE)
    foreach(t IN LISTS all)
        if(TARGET ${t} AND t MATCHES "^ggml-cpu-(.+)$")
            list(APPEND built ${CMAKE_MATCH_1})
        endif()
    endforeach()
    foreach(v IN LISTS _EDGE_LORA_AMX_VARIANTS)
        if(TARGET ggml-cpu-${v})
            message(FATAL_ERROR "ggml built the AMX variant ggml-cpu-${v} although it was not asked for")
        endif()
    endforeach()
    foreach(v IN LISTS variants)
        if(NOT TARGET ggml-cpu-${v})
            message(FATAL_ERROR "CPU variant '${v}' is not one ggml knows for this compiler (ggml built: ${built})")
        endif()
    endforeach()
endfunction()
