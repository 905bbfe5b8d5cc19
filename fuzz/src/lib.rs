//! Fuzz targets; see fuzz/README.md.
