"""dicom-cae: JPEG compression with convolutional-autoencoder reconstruction for DICOM images."""

__version__ = "0.1.0"
