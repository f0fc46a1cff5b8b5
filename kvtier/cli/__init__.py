"""The `kvtier` command: one module per command, parsing and printing only (the work lives in the
package); importing it does not load torch."""
