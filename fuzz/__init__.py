"""Fuzz targets for every vmboot parser (issue 8, "hostile input"); see fuzz/README.md."""
