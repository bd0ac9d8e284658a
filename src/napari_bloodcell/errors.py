"""Exception types raised by napari-bloodcell for bad input.

Every error a user can cause (a bad file, a wrong array, an incompatible model)
is one of these, with a message that names the input and what was expected.
The CLI prints the message and exits with status 2; the napari widgets show it
as a notification.
"""


class BloodcellError(Exception):
    """Base class of all user-facing napari-bloodcell errors."""


class InputImageError(BloodcellError, ValueError):
    """An image file or array cannot be used (unreadable, wrong shape, axes or values)."""


class ModelError(BloodcellError):
    """A model file is missing, unreadable or incompatible with the request."""


class DatasetError(BloodcellError, ValueError):
    """A training or evaluation folder is empty, malformed or has unknown classes."""


class OutputExistsError(BloodcellError, FileExistsError):
    """Results already exist in the output folder and overwriting was not requested."""


class TrackingError(BloodcellError, ValueError):
    """A cells table or tracking request cannot be used (missing columns, bad values)."""


def one_line(error: BaseException) -> str:
    """An exception's message on one line (decoders and libraries write several)."""
    return " ".join(str(error).split())
