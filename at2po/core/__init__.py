"""Pure numpy/torch algorithms of AT²PO: turn trees, expansion selection, credit assignment, policy losses."""
