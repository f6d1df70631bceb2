"""The presentation floor: what people read and type. Rendering of tables and lines (render), findings
worth a sentence (findings), the HTML/Markdown report with its plots (report), the catalog of forms
(catalog), the pytest helpers users call in their own CI (testing) and the command line (cli), which
parses options, makes one library call and prints. Imports: every floor below; nothing imports it
except the facade (normonnx/__init__)."""
