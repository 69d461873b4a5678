"""The hostile test suite (issue 15): bad inputs at every boundary, each refused with one exact typed error."""
