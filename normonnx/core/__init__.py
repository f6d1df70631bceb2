"""The ground floor: what every other floor stands on and that imports no other floor. Exit codes and
one-line errors (errors), the version, dtype/op tables, the small registry type, the spec (what to
normalize) and its parameters, the float64 oracle (reference), the comparator and the one way an output
is judged (compare), the one verdict (judge), timing, safe writes (safeio) and the result record
schema (results, outputs). Imports: the standard library and numpy; onnx and torch only inside
functions, where a module needs them."""
