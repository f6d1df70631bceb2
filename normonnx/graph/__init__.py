"""The model floor: an ONNX file as a graph normonnx can read and rewrite. Loading and external data
(graph), input dims and weightless shape inference (shapes), the model as onnx_ir with the one region
algorithm (irview), what a found norm is (patterns), finding norms by op and by what they compute
(identify), the cut-out of one layer (cutout), a spec and parameters read back from a graph (derive),
the rewrite rules (rules) and their plan and apply (rewrite). Imports: core only."""
