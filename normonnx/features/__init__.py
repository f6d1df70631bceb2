"""The features floor: the commands that use the engine, side by side. scan/ (finding and checking the
norms of a user's model, --validate, --activations and its what-ifs, golden outputs), sweep (the
matrix, resume, merge) and diff (two results compared). Features are peers and never import each
other. Imports: engine and the floors below."""
