"""Everything that measures: FID/KID, IoU/DICE and the UNet protocol, MINE, generation."""
