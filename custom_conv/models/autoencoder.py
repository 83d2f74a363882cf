"""A small convolutional autoencoder: strided convolutions down, transposed
convolutions up, so that it exercises custom_conv's ConvTranspose2d where
the classifiers do not."""
import torch

from ._layers import layers

__all__ = ["ConvAutoencoder", "conv_autoencoder"]


class ConvAutoencoder(torch.nn.Module):
    """conv 3x3/2 (16) - conv 3x3/2 (32) - convT 3x3/2 (16) - convT 3x3/2 (in_channels).

    Each convolution halves the image (rounding up); each transposed one
    doubles it back, given the size to restore (output_size), so that images
    of any size come back at their own size, odd sides included. Returns
    logits of the pixels: train it with BCEWithLogitsLoss on images in [0, 1],
    or MSELoss on anything.
    """

    def __init__(self, in_channels=1, width=16, backend="custom"):
        super().__init__()
        L = layers(backend)
        self.backend = backend
        self.down1 = L.Conv2d(in_channels, width, 3, stride=2, padding=1)
        self.down2 = L.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.up1 = L.ConvTranspose2d(2 * width, width, 3, stride=2, padding=1)
        self.up2 = L.ConvTranspose2d(width, in_channels, 3, stride=2, padding=1)

    def encode(self, x):
        return torch.relu(self.down2(torch.relu(self.down1(x))))

    def forward(self, x):
        h = torch.relu(self.down1(x))
        z = torch.relu(self.down2(h))
        h = torch.relu(self.up1(z, output_size=h.shape[-2:]))
        return self.up2(h, output_size=x.shape[-2:])


def conv_autoencoder(in_channels=1, width=16, backend="custom"):
    return ConvAutoencoder(in_channels=in_channels, width=width, backend=backend)
