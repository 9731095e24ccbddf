"""The VAE's numbers on one Keras backend, in a process of its own (a process runs one backend):

    python tests/backend_elbo.py BACKEND WEIGHTS DATA OUT

Builds the VAE below, loads WEIGHTS where the file exists (else saves its fresh weights there),
and with the images `x` and the noise `eps` of DATA (.npz) writes to OUT (.npz): each image's
negative ELBO, and the batch's training objective and logged loss as `VAE.compute_loss` and
`compute_metrics` give them with that noise (free bits, a KL warm-up part way, a KL weight).

Then, through Keras' own compiled steps: whether two evaluation steps drew other noise, and the
change to every weight that one step of plain SGD makes with that noise (plain SGD: an adaptive
optimizer's first step is about the gradient's sign, which would hide a misscaled gradient).
"""

import sys
from pathlib import Path

from pipeline.backend import start

backend, weights, data_path, out = sys.argv[1:]
start(backend)

import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

from pipeline.model import build_vae, negative_elbo  # noqa: E402
from pipeline.params import Model, Train  # noqa: E402

vae = build_vae(
    Model(latent_dim=4), Train(free_bits=2.0, kl_warmup_epochs=1, kl_weight=0.9), seed=1, steps_per_epoch=10
)
if Path(weights).is_file():
    vae.load_weights(weights)
else:
    vae.save_weights(weights)
arrays = np.load(data_path)
x, eps = arrays["x"], arrays["eps"]

mu, logvar = vae.encoder(x)
elbo = negative_elbo(x, vae.decoder(mu + ops.exp(0.5 * logvar) * eps), mu, logvar)
# The same noise on every backend, in place of the sampling layer's own draw.
vae.sampling.call = lambda inputs: inputs[0] + ops.exp(0.5 * inputs[1]) * eps
vae.kl_steps.assign(4.0)  # 4 of the warm-up's 10 steps: the KL counts 0.9 * 0.4
objective = vae.compute_loss(x=x, training=True)
logged = vae.compute_metrics(x, None, None)

sgd = build_vae(Model(latent_dim=4), Train(optimizer="sgd", learning_rate=0.01), seed=2)
sgd_weights = weights.replace(".weights.h5", "-sgd.weights.h5")
if Path(sgd_weights).is_file():
    sgd.load_weights(sgd_weights)
else:
    sgd.save_weights(sgd_weights)
state = ops.convert_to_numpy(sgd.sampling.seed_generator.state).copy()
first, second = (sgd.test_on_batch(x, return_dict=True)["loss"] for _ in range(2))
noise_moved = bool(first != second) and not np.array_equal(
    state, ops.convert_to_numpy(sgd.sampling.seed_generator.state)
)
before = [np.array(w) for w in sgd.get_weights()]
sgd.sampling.call = vae.sampling.call  # the same noise again
sgd.train_on_batch(x)
deltas = {
    f"delta_{i}": np.array(w) - b for i, (w, b) in enumerate(zip(sgd.get_weights(), before, strict=True))
}

np.savez(
    out,
    **deltas,
    noise_moved=noise_moved,
    elbo=ops.convert_to_numpy(elbo),
    objective=float(ops.convert_to_numpy(objective)),
    loss=float(ops.convert_to_numpy(logged["loss"])),
    logged_objective=float(ops.convert_to_numpy(logged["objective"])),
    kl_steps=float(ops.convert_to_numpy(vae.kl_steps)),
)
