"""Reading and writing files safely: weights, images and result PNGs."""
