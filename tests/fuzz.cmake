# The libFuzzer target over the command envelope (tests/fuzz). It needs clang, so it is not built
# by this (gcc) build: tests/fuzz/run builds it in its own tree (cmake --preset fuzz, build/fuzz),
# runs every checked-in seed, then fuzzes for DEDUP_FUZZ_SECONDS (60). It runs alone: the build
# takes both cores for about a minute, and the fuzzing one core, and timing-sensitive suites must
# not share the machine with either.
add_test(NAME envelope_fuzz COMMAND ${PROJECT_SOURCE_DIR}/tests/fuzz/run)
set_tests_properties(envelope_fuzz PROPERTIES LABELS fuzz TIMEOUT 900 RUN_SERIAL TRUE)
