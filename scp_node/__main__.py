import sys

from dicom_cae.cli import main

sys.exit(main(["serve", *sys.argv[1:]]))
