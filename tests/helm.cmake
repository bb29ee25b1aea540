# Deployment artefacts: the Helm chart (rendered by a Helm-compatible renderer built from Debian's
# Go packages, since Helm itself cannot be installed here) and the Dockerfile. Label: helm.
# Both scripts print "N passed, N failed" and exit non-zero on any failure.
set(DEDUP_SYSTEM_PYTHON /usr/bin/python3 CACHE FILEPATH
    "Debian's python3 (python3-yaml, python3-jsonschema) for the chart and Dockerfile tests")

add_test(NAME helm_chart
  COMMAND ${DEDUP_SYSTEM_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/helm/test_chart.py
          --root ${PROJECT_SOURCE_DIR} --build-dir ${CMAKE_CURRENT_BINARY_DIR}/helm-render)

# The shared-library check needs the plain binary: a sanitizer build also links libasan/libubsan,
# which the image does not ship.
set(_dedup_dockerfile_args --root ${PROJECT_SOURCE_DIR})
if(NOT DEDUP_SANITIZERS)
  list(APPEND _dedup_dockerfile_args --binary $<TARGET_FILE:dedup-worker>)
endif()
add_test(NAME helm_dockerfile
  COMMAND ${DEDUP_SYSTEM_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/helm/test_dockerfile.py ${_dedup_dockerfile_args})

set_tests_properties(helm_chart helm_dockerfile PROPERTIES LABELS helm TIMEOUT 300)
