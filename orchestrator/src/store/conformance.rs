//! The tests every store backend must pass, as a macro that expands to one test per case.
