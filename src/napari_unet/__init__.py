"""napari-unet: the U-Net of Ronneberger, Fischer and Brox (2015) for napari and the command line."""
