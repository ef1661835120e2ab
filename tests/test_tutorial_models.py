"""The models of pytorch/examples' VAE and siamese-network programs, in small programs of our own written in their
style (the real programs run in benchmarks/census.py): the same model code runs on `torch` and on `tracejit`
(``import tracejit as torch``), forward and backward agree with PyTorch for the same weights, and a training
step compiled with ``tracejit.compile`` equals the eager one -- the VAE's ``randn_like`` draws included (the
generator is counter-based, so a compiled step draws the numbers eager would)."""

import numpy as np
import pytest

import tracejit

torch_ref = pytest.importorskip("torch")


def vae_class(torch):
    nn, F = torch.nn, torch.nn.functional

    class VAE(nn.Module):
        def __init__(self, pixels=36, hidden=16, latent=4):
            super().__init__()
            self.pixels = pixels
            self.enc = nn.Linear(pixels, hidden)
            self.mu = nn.Linear(hidden, latent)
            self.logvar = nn.Linear(hidden, latent)
            self.dec = nn.Linear(latent, hidden)
            self.out = nn.Linear(hidden, pixels)

        def encode(self, x):
            h = F.relu(self.enc(x))
            return self.mu(h), self.logvar(h)

        def reparameterize(self, mu, logvar):
            if not self.training:
                return mu
            std = torch.exp(0.5 * logvar)
            eps = torch.randn_like(std)
            return mu + eps * std

        def decode(self, z):
            return torch.sigmoid(self.out(F.relu(self.dec(z))))

        def forward(self, x):
            mu, logvar = self.encode(x.view(-1, self.pixels))
            return self.decode(self.reparameterize(mu, logvar)), mu, logvar

    def loss_function(recon_x, x, mu, logvar):
        bce = F.binary_cross_entropy(recon_x, x.view(-1, recon_x.shape[1]), reduction="sum")
        kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        return bce + kld

    return VAE, loss_function


def siamese_class(torch):
    nn = torch.nn

    class SiameseNetwork(nn.Module):
        def __init__(self):
            super().__init__()
            self.tower = nn.Sequential(
                nn.Conv2d(1, 4, kernel_size=3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
                nn.MaxPool2d(2), nn.Conv2d(4, 6, kernel_size=3), nn.ReLU(), nn.AdaptiveAvgPool2d((1, 1)))
            self.fc = nn.Sequential(nn.Linear(12, 8), nn.ReLU(inplace=True), nn.Linear(8, 1))
            self.sigmoid = nn.Sigmoid()

        def forward_once(self, x):
            out = self.tower(x)
            return out.view(out.size()[0], -1)

        def forward(self, input1, input2):
            output = torch.cat((self.forward_once(input1), self.forward_once(input2)), 1)
            return self.sigmoid(self.fc(output))

    return SiameseNetwork


def _arr(t):
    return np.array(t.detach().numpy() if hasattr(t, "detach") else t, copy=True)


def _copy_weights(theirs, ours):
    ours.load_state_dict({k: tracejit.tensor(_arr(v)) for k, v in theirs.state_dict().items()})


def _images(rng, n, side):
    return (rng.random((n, 1, side, side)) > 0.6).astype(np.float32) * rng.random((n, 1, side, side),
                                                                                   dtype=np.float32)


# ----------------------------------------------------------------------------------------------------- VAE


def test_vae_forward_backward_matches_torch(rng):
    torch_ref.manual_seed(0)
    TVAE, tloss = vae_class(torch_ref)
    OVAE, oloss = vae_class(tracejit)
    theirs, ours = TVAE().eval(), OVAE().eval()  # eval: z = mu, no noise, so both compute the same numbers
    _copy_weights(theirs, ours)
    x = _images(rng, 5, 6)
    results = []
    for m, model, loss_fn in ((torch_ref, theirs, tloss), (tracejit, ours, oloss)):
        xb = m.tensor(x)
        recon, mu, logvar = model(xb)
        loss = loss_fn(recon, xb, mu, logvar)
        loss.backward()
        results.append([_arr(loss), _arr(recon)] + [_arr(p.grad) for p in model.parameters()])
    for a, b in zip(*results):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def _train_vae(batches, backend):
    tracejit.manual_seed(0)
    VAE, loss_function = vae_class(tracejit)
    model = VAE()
    optimizer = tracejit.optim.Adam(model.parameters(), lr=1e-2)

    def train_step(data):
        optimizer.zero_grad()
        recon_batch, mu, logvar = model(data)
        loss = loss_function(recon_batch, data, mu, logvar)
        loss.backward()
        optimizer.step()
        return loss, recon_batch

    run = train_step if backend is None else tracejit.compile(train_step, backend=backend)
    model.train()
    tracejit.manual_seed(1)  # the noise stream
    outs = [[_arr(v) for v in run(tracejit.tensor(b))] for b in batches]
    model.eval()
    with tracejit.no_grad():  # decode samples of the prior, as the VAE program does after each epoch
        tracejit.manual_seed(2)
        samples = _arr(model.decode(tracejit.randn(3, 4)))
    return outs + [[samples]], {k: _arr(v) for k, v in model.state_dict().items()}, run


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_vae_compiled_training_equals_eager(rng, backend):
    batches = [_images(rng, 4, 6) for _ in range(4)]
    eager_out, eager_state, _ = _train_vae(batches, None)
    comp_out, comp_state, run = _train_vae(batches, backend)
    assert len(run.variants) == 1  # one trace serves every step, the noise included
    tol = dict(rtol=0, atol=0) if backend == "reference" else dict(rtol=2e-4, atol=1e-5)
    for a, b in zip(eager_out, comp_out):
        for u, v in zip(a, b):
            np.testing.assert_allclose(v, u, **tol)
    assert not np.allclose(eager_out[0][1], eager_out[1][1])  # fresh noise (and weights) each step
    for k in eager_state:
        np.testing.assert_allclose(comp_state[k], eager_state[k], **tol, err_msg=k)


# ------------------------------------------------------------------------------------------------- siamese


def test_siamese_forward_backward_matches_torch(rng):
    torch_ref.manual_seed(0)
    theirs, ours = siamese_class(torch_ref)(), siamese_class(tracejit)()
    _copy_weights(theirs, ours)
    a, b = _images(rng, 4, 8), _images(rng, 4, 8)
    target = np.array([1, 0, 1, 0], np.float32)
    results = []
    for m, model in ((torch_ref, theirs), (tracejit, ours)):
        out = model(m.tensor(a), m.tensor(b)).squeeze()
        loss = m.nn.BCELoss()(out, m.tensor(target))
        loss.backward()
        results.append([_arr(loss), _arr(out)] + [_arr(p.grad) for p in model.parameters()]
                       + [_arr(v) for k, v in model.state_dict().items() if "running" in k])
    for x, y in zip(*results):
        np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-6)


def _train_siamese(batches, backend):
    tracejit.manual_seed(0)
    model = siamese_class(tracejit)()
    optimizer = tracejit.optim.Adadelta(model.parameters(), lr=1.0)
    scheduler = tracejit.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
    criterion = tracejit.nn.BCELoss()

    def train_step(images_1, images_2, targets):
        optimizer.zero_grad()
        outputs = model(images_1, images_2).squeeze()
        loss = criterion(outputs, targets)
        loss.backward()
        optimizer.step()
        return loss

    run = train_step if backend is None else tracejit.compile(train_step, backend=backend)
    model.train()
    losses = []
    for _epoch in range(2):
        for a, b, t in batches:
            losses.append(_arr(run(tracejit.tensor(a), tracejit.tensor(b), tracejit.tensor(t))))
        scheduler.step()
    model.eval()
    with tracejit.no_grad():  # the test loop: eval-mode batch norm, predictions thresholded at 0.5
        a, b, t = batches[0]
        pred = tracejit.where(model(tracejit.tensor(a), tracejit.tensor(b)) > 0.5, 1, 0)
    return losses, {k: _arr(v) for k, v in model.state_dict().items()}, _arr(pred), run


# The cpu backend agrees too (rtol 2e-4), but a cold kernel cache costs it ~1.5 minutes of Numba compilation for
# this graph's conv, batch-norm and pooling kernels on a loaded 2-core machine, so the suite runs the reference
# backend here and leaves the cpu backend's conv kernels to test_nn_layers13.py's smaller decoder.
@pytest.mark.parametrize("backend", ["reference"])
def test_siamese_compiled_training_equals_eager(rng, backend):
    batches = [(_images(rng, 4, 8), _images(rng, 4, 8), np.array([1, 0, 0, 1], np.float32)) for _ in range(2)]
    eager = _train_siamese(batches, None)
    comp = _train_siamese(batches, backend)
    assert len(comp[3].variants) == 1  # the scheduler's lr changes are state, not retraces
    tol = dict(rtol=0, atol=0) if backend == "reference" else dict(rtol=2e-4, atol=1e-5)
    np.testing.assert_allclose(comp[0], eager[0], **tol)
    for k in eager[1]:
        np.testing.assert_allclose(comp[1][k], eager[1][k], **tol, err_msg=k)
    np.testing.assert_array_equal(comp[2], eager[2])
