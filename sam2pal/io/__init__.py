"""Reading and writing what users hand us and what we hand back: images, COCO, output folders."""
