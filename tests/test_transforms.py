"""tracejit.transforms against torchvision's written-down semantics (torchvision is not installed): hand-computed
values, Pillow images where Pillow is installed, and PyTorch's interpolate (the `ref` extra) for Resize."""

import numpy as np
import pytest

import tracejit as tj
from tracejit import transforms as T
from tracejit.transforms import functional as F
from tracejit.utils.data import DataLoader, Dataset


def _img(c=3, h=4, w=5, dtype=np.float32):
    return np.arange(c * h * w, dtype=dtype).reshape(c, h, w)


def test_reachable_the_torchvision_way():
    import tracejit

    assert tracejit.transforms is T and T.functional is F
    assert T.InterpolationMode.BILINEAR.value == "bilinear"


# ----------------------------------------------------------------------------------------------- ToTensor


def test_to_tensor_from_hwc_uint8_arrays():
    hwc = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    t = T.ToTensor()(hwc)
    assert t.dtype is tj.float32 and t.shape == (3, 2, 3)
    np.testing.assert_array_equal(t.numpy(), hwc.transpose(2, 0, 1).astype(np.float32) / np.float32(255))
    assert t.numpy()[2, 1, 2] == np.float32(170) / np.float32(255)
    gray = T.ToTensor()(np.full((2, 2), 255, np.uint8))
    assert gray.shape == (1, 2, 2) and gray.numpy().tolist() == [[[1.0, 1.0], [1.0, 1.0]]]
    # other dtypes keep their values: only uint8 is scaled
    f = T.ToTensor()(np.full((2, 2, 1), 3.5, np.float64))
    assert f.dtype is tj.float64 and f.numpy().max() == 3.5
    with pytest.raises(ValueError, match="pic should be 2/3 dimensional. Got 4 dimensions"):
        T.ToTensor()(np.zeros((1, 2, 2, 3), np.uint8))
    with pytest.raises(TypeError, match="pic should be PIL Image or ndarray"):
        T.ToTensor()([[1, 2]])
    already = tj.ones(1, 2, 2)
    assert T.ToTensor()(already) is already  # tracejit's datasets give tensors: ToTensor passes them through


def test_to_tensor_from_pil_images():
    Image = pytest.importorskip("PIL.Image")
    gray = np.array([[0, 51, 255], [102, 153, 204]], np.uint8)
    t = T.ToTensor()(Image.fromarray(gray))
    assert t.shape == (1, 2, 3) and t.dtype is tj.float32
    np.testing.assert_array_equal(t.numpy()[0], gray.astype(np.float32) / np.float32(255))
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    t = T.ToTensor()(Image.fromarray(rgb))
    np.testing.assert_array_equal(t.numpy(), T.ToTensor()(rgb).numpy())
    bits = T.ToTensor()(Image.fromarray(np.eye(2, dtype=bool)))  # mode "1": 0/1 -> 0.0/1.0
    assert bits.numpy().tolist() == [[[1.0, 0.0], [0.0, 1.0]]]
    floats = T.ToTensor()(Image.fromarray(np.array([[1.5, -2.0]], np.float32)))  # mode "F": not scaled
    assert floats.dtype is tj.float32 and floats.numpy().tolist() == [[[1.5, -2.0]]]
    raw = T.PILToTensor()(Image.fromarray(rgb))
    assert raw.shape == (3, 2, 3) and raw.numpy().tolist() == rgb.transpose(2, 0, 1).tolist()


def test_geometric_transforms_on_pil_images_keep_the_kind_and_pixels():
    Image = pytest.importorskip("PIL.Image")
    rgb = (np.arange(4 * 5 * 3) * 3 % 256).astype(np.uint8).reshape(4, 5, 3)
    img = Image.fromarray(rgb)
    for fn in (F.hflip, F.vflip, lambda x: F.pad(x, (1, 2), fill=(9, 8, 7)), lambda x: F.crop(x, 1, 2, 2, 2),
               lambda x: F.center_crop(x, 3), lambda x: F.pad(x, 2, padding_mode="reflect")):
        out = fn(img)
        assert isinstance(out, Image.Image) and out.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(out), fn(rgb))  # the same pixels as on the HWC array
    small = F.resize(img, [2, 3])
    assert isinstance(small, Image.Image) and small.size == (3, 2)
    np.testing.assert_array_equal(np.asarray(small), np.asarray(img.resize((3, 2), Image.BILINEAR)))
    assert T.Resize(8)(img).size == (10, 8)  # the shorter edge (h=4) becomes 8, the aspect ratio stays


# ----------------------------------------------------------------------------------------------- Normalize


def test_normalize_per_channel():
    x = tj.tensor(_img(2, 2, 2))
    out = T.Normalize((1.0, 4.0), (2.0, 0.5))(x)
    expected = np.stack([(_img(2, 2, 2)[0] - 1) / 2, (_img(2, 2, 2)[1] - 4) / 0.5])
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6)
    assert x.numpy()[0, 0, 0] == 0  # not in place by default
    batched = T.Normalize([0.5], [0.25])(tj.ones(3, 1, 2, 2))  # [..., C, H, W]
    assert batched.shape == (3, 1, 2, 2) and batched.numpy().max() == 2.0
    inplace = tj.ones(1, 2, 2)
    T.Normalize((1.0,), (1.0,), inplace=True)(inplace)
    assert inplace.numpy().max() == 0.0
    assert repr(T.Normalize((0.1307,), (0.3081,))) == "Normalize(mean=(0.1307,), std=(0.3081,))"


def test_normalize_is_differentiable_and_checks_its_input():
    x = tj.ones(2, 1, 1, requires_grad=True)
    T.Normalize((0.5, 0.5), (2.0, 4.0))(x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy().ravel(), [0.5, 0.25])
    with pytest.raises(TypeError, match="Input tensor should be a float tensor. Got tracejit.int64"):
        T.Normalize((0,), (1,))(tj.zeros(1, 2, 2, dtype=tj.int64))
    with pytest.raises(ValueError, match="std evaluated to zero"):
        T.Normalize((0.0, 0.0), (1.0, 0.0))(tj.zeros(2, 2, 2))
    with pytest.raises(ValueError, match=r"tensor image of size \(..., C, H, W\)"):
        T.Normalize((0,), (1,))(tj.zeros(2, 2))
    with pytest.raises(TypeError, match="img should be Tensor Image"):
        T.Normalize((0,), (1,))(np.zeros((1, 2, 2)))


# ----------------------------------------------------------------------------------------------- padding and crops


@pytest.mark.parametrize("mode,row", [
    # torchvision's documented examples: padding [1, 2, 3, 4] by 2 on both sides
    ("reflect", [3, 2, 1, 2, 3, 4, 3, 2]),
    ("symmetric", [2, 1, 1, 2, 3, 4, 4, 3]),
    ("edge", [1, 1, 1, 2, 3, 4, 4, 4]),
    ("constant", [9, 9, 1, 2, 3, 4, 9, 9]),
])
def test_pad_modes(mode, row):
    x = tj.tensor(np.array([[[1, 2, 3, 4]]], np.float32))
    out = T.Pad((2, 0), fill=9, padding_mode=mode)(x)
    assert out.shape == (1, 1, 8) and out.numpy()[0, 0].tolist() == row


def test_pad_forms_and_per_channel_fill():
    x = tj.tensor(np.ones((2, 2, 3), np.float32))
    out = F.pad(x, [1, 2, 3, 4], fill=(5.0, 6.0))  # left, top, right, bottom
    assert out.shape == (2, 2 + 2 + 4, 3 + 1 + 3)
    a = out.numpy()
    assert a[0, 0, 0] == 5 and a[1, 0, 0] == 6 and a[0, 2, 1] == 1 and a[1, -1, -1] == 6
    assert F.pad(x, 1).shape == (2, 4, 5) and F.pad(x, [1]).shape == (2, 4, 5)
    hwc = F.pad(np.zeros((2, 2, 3), np.uint8), 1, fill=(1, 2, 3))
    assert hwc.shape == (4, 4, 3) and hwc[0, 0].tolist() == [1, 2, 3] and hwc[1, 1].tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="Padding mode should be either"):
        T.Pad(1, padding_mode="wrap")
    with pytest.raises(ValueError, match="Padding must be an int or a 1, 2, or 4 element tuple"):
        T.Pad((1, 2, 3))


def test_crop_and_center_crop():
    x = tj.tensor(_img(1, 4, 5))
    assert F.crop(x, 1, 2, 2, 3).numpy()[0].tolist() == [[7, 8, 9], [12, 13, 14]]
    outside = F.crop(x, -1, 3, 2, 3).numpy()[0]  # beyond the borders: zeros, as torchvision
    assert outside.tolist() == [[0, 0, 0], [3, 4, 0]]
    # top = round((4 - 2) / 2) = 1, left = round((5 - 2) / 2) = round(1.5) = 2 (half to even)
    assert T.CenterCrop(2)(x).numpy()[0].tolist() == [[7, 8], [12, 13]]
    # left = round(0.5) = 0
    assert T.CenterCrop((4, 4))(x).numpy()[0, 0].tolist() == [0, 1, 2, 3]
    big = T.CenterCrop((6, 7))(x).numpy()[0]  # padded by (1, 1, 1, 1) with zeros
    assert big.shape == (6, 7) and big[0].tolist() == [0] * 7 and big[1].tolist() == [0, 0, 1, 2, 3, 4, 0]
    with pytest.raises(ValueError, match="Please provide only two dimensions"):
        T.CenterCrop((1, 2, 3))
    assert repr(T.CenterCrop(3)) == "CenterCrop(size=(3, 3))"


def test_random_crop_covers_every_position_and_is_seedable():
    x = tj.tensor(_img(1, 3, 4))
    crop = T.RandomCrop(2)
    tj.manual_seed(0)
    first = [crop(x).numpy()[0, 0, 0] for _ in range(60)]
    tj.manual_seed(0)
    again = [crop(x).numpy()[0, 0, 0] for _ in range(60)]
    assert first == again
    # a 2x2 window in 3x4 starts at rows 0-1 and columns 0-2: its top-left value is 4 * row + col
    assert set(first) == {0, 1, 2, 4, 5, 6}
    g = tj.Generator().manual_seed(0)  # the transform draws from the default generator, not from others
    tj.manual_seed(0)
    tj.rand(1, generator=g)
    assert [crop(x).numpy()[0, 0, 0] for _ in range(60)] == first
    assert T.RandomCrop((3, 4))(x).numpy().tolist() == x.numpy().tolist()  # the whole image: no draw
    with pytest.raises(ValueError, match=r"Required crop size \(4, 4\) is larger than input image size \(3, 4\)"):
        T.RandomCrop(4)(x)


def test_random_crop_padding_and_pad_if_needed():
    x = tj.tensor(np.ones((1, 2, 2), np.float32))
    tj.manual_seed(3)
    seen = set()
    for _ in range(80):
        out = T.RandomCrop(2, padding=1, fill=-1.0)(x).numpy()[0]
        seen.add(tuple(out.ravel()))
        assert out.shape == (2, 2) and set(out.ravel()) <= {1.0, -1.0}
    assert len(seen) == 9 and (1.0, 1.0, 1.0, 1.0) in seen  # every window of the 4x4 padded image
    # pad_if_needed pads both sides by the missing amount: width 2 -> 2 + 2 * 3 = 8 >= 5, then crops 5
    out = T.RandomCrop((2, 5), pad_if_needed=True, padding_mode="edge")(x)
    assert out.shape == (1, 2, 5) and out.numpy().min() == 1.0
    out = T.RandomCrop(4, pad_if_needed=True, fill=0)(np.ones((2, 3), np.uint8))
    assert out.shape == (4, 4) and out.sum() == 6
    assert repr(T.RandomCrop(32, padding=4)) == "RandomCrop(size=(32, 32), padding=4)"


def test_flips():
    x = tj.tensor(_img(1, 2, 3))
    assert T.RandomHorizontalFlip(p=1.0)(x).numpy()[0].tolist() == [[2, 1, 0], [5, 4, 3]]
    assert T.RandomVerticalFlip(p=1.0)(x).numpy()[0].tolist() == [[3, 4, 5], [0, 1, 2]]
    assert T.RandomHorizontalFlip(p=0.0)(x) is x
    flip = T.RandomHorizontalFlip()
    tj.manual_seed(5)
    a = [flip(x).numpy()[0, 0, 0] for _ in range(40)]
    tj.manual_seed(5)
    b = [flip(x).numpy()[0, 0, 0] for _ in range(40)]
    assert a == b and set(a) == {0, 2}
    assert F.hflip(np.array([[1, 2]])).tolist() == [[2, 1]]  # arrays are HWC: width is axis 1


# ----------------------------------------------------------------------------------------------- Resize


def test_resize_bilinear_by_hand():
    # 2 -> 4 (upscaling, half-pixel centres): sources at -0.25, 0.25, 0.75, 1.25, clamped at the borders
    x = tj.tensor(np.array([[[0.0, 4.0]]], np.float32))
    out = F.resize(x, [1, 4])
    np.testing.assert_allclose(out.numpy()[0, 0], [0.0, 1.0, 3.0, 4.0])
    # 4 -> 2 with antialias: a triangle filter of radius 2 (pixels) around the centres 1.0 and 3.0 weighs the
    # pixel centres 0.5, 1.5, 2.5 by 3/4, 3/4, 1/4 (and 1.5, 2.5, 3.5 by 1/4, 3/4, 3/4), normalised by 7/4
    y = tj.tensor(np.array([[[0.0, 1.0, 2.0, 3.0]]], np.float32))
    expected = [(0.75 + 2 * 0.25) / 1.75, (0.25 + 1.5 + 2.25) / 1.75]
    np.testing.assert_allclose(F.resize(y, [1, 2]).numpy()[0, 0], expected, rtol=1e-6)
    # ... and without: each output interpolates its two neighbours (sources 0.5 and 2.5)
    np.testing.assert_allclose(F.resize(y, [1, 2], antialias=False).numpy()[0, 0], [0.5, 2.5])
    near = F.resize(y, [1, 2], interpolation=T.InterpolationMode.NEAREST).numpy()[0, 0]
    assert near.tolist() == [0.0, 2.0]


def test_resize_sizes():
    x = tj.zeros(3, 4, 6)
    assert T.Resize(2)(x).shape == (3, 2, 3)  # the shorter edge becomes 2
    assert T.Resize([2])(x).shape == (3, 2, 3)
    assert T.Resize((5, 7))(x).shape == (3, 5, 7)
    assert T.Resize(3, max_size=5)(x).shape == (3, 3, 4)  # int(3 * 6 / 4) = 4 <= 5
    assert T.Resize(3, max_size=4)(tj.zeros(3, 4, 8)).shape == (3, 2, 4)  # the longer edge 6 > 4: capped
    assert T.Resize(8)(tj.zeros(1, 9, 8)).shape == (1, 9, 8)  # int(8 * 9 / 8) = 9
    assert T.Resize((4, 6))(x) is x
    with pytest.raises(ValueError, match="max_size = 2 must be strictly greater"):
        T.Resize(3, max_size=2)(x)
    with pytest.raises(ValueError, match="1 or 2 values"):
        T.Resize((1, 2, 3))
    with pytest.raises(NotImplementedError, match="bicubic"):
        T.Resize(2, interpolation=T.InterpolationMode.BICUBIC)(x)
    ints = F.resize(tj.tensor(np.array([[[0, 3]]], np.int64)), [1, 4])
    assert ints.dtype is tj.int64 and ints.numpy().tolist() == [[[0, 1, 2, 3]]]  # 0.75, 2.25 rounded
    hwc = F.resize(np.zeros((4, 6, 3), np.uint8), 2)
    assert hwc.shape == (2, 3, 3) and hwc.dtype == np.uint8
    assert repr(T.Resize(3)) == "Resize(size=3, interpolation=bilinear, max_size=None, antialias=True)"


@pytest.mark.parametrize("size", [(3, 4), (11, 7), (8, 3), (2, 2)])
def test_resize_matches_pytorch_interpolate(size):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).standard_normal((2, 3, 7, 9)).astype(np.float32)
    for mode, kw in [("bilinear", {"antialias": True}), ("bilinear", {"antialias": False}), ("nearest", {}),
                     ("nearest-exact", {})]:
        ref = torch.nn.functional.interpolate(torch.from_numpy(x), size=size, mode=mode, **kw).numpy()
        got = F.resize(tj.tensor(x), list(size), interpolation=T.InterpolationMode(mode),
                       antialias=kw.get("antialias", True)).numpy()
        np.testing.assert_allclose(got, ref, atol=2e-6, err_msg=f"{mode} {kw}")


# ----------------------------------------------------------------------------------------------- Compose, Lambda


def test_compose_and_lambda():
    pipeline = T.Compose([T.ToTensor(), T.Lambda(lambda t: t * 2), T.Normalize((1.0,), (1.0,))])
    out = pipeline(np.full((2, 2), 255, np.uint8))
    assert out.shape == (1, 2, 2) and out.numpy().tolist() == [[[1.0, 1.0], [1.0, 1.0]]]
    assert repr(pipeline).splitlines() == ["Compose(", "    ToTensor()", "    Lambda()",
                                           "    Normalize(mean=(1.0,), std=(1.0,))", ")"]
    with pytest.raises(TypeError, match="Argument lambd should be callable, got 'int'"):
        T.Lambda(3)
    with pytest.raises(TypeError, match="img should be a tensor, a NumPy array or a PIL Image"):
        F.hflip([1, 2])


class _HWCImages(Dataset):
    """uint8 HWC images, as a decoded image dataset holds them."""

    def __init__(self, transform):
        self.images = (np.arange(6 * 6 * 6 * 3) % 256).astype(np.uint8).reshape(6, 6, 6, 3)
        self.transform = transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(self.images[i]), i


def test_cifar_style_pipeline_through_a_loader():
    augment = T.Compose([T.RandomCrop(6, padding=2), T.RandomHorizontalFlip(), T.ToTensor(),
                         T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])

    def epoch():
        tj.manual_seed(1)
        return [x.numpy() for x, _ in DataLoader(_HWCImages(augment), batch_size=4)]

    a, b = epoch(), epoch()
    assert a[0].shape == (4, 3, 6, 6) and a[0].dtype == np.float32
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    assert a[0].min() >= -1.0 and a[0].max() <= 1.0
