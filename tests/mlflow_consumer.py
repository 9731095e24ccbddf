"""A consumer of the logged model that has nothing of this project, as a user's script would be.

    MLFLOW_TRACKING_URI=... python mlflow_consumer.py MODEL_URI INPUTS.npz OUTPUTS.npz

Loads the model by URI with MLflow's pyfunc and Keras loaders, predicts in every mode on the
`images` and `z` of INPUTS.npz, and saves what came back.
"""

import sys

import mlflow
import numpy as np

assert "pipeline" not in sys.modules, "the consumer must not import the project"
uri, inputs, outputs = sys.argv[1:]
given = np.load(inputs)

served = mlflow.pyfunc.load_model(uri)
encoded = served.predict(given["images"], params={"mode": "encode"})
results = {
    "reconstruct": served.predict(given["images"]),
    "mean": encoded["mean"],
    "log_variance": encoded["log_variance"],
    "generate": served.predict(given["z"], params={"mode": "generate"}),
}
keras_model = mlflow.keras.load_model(uri)
results["keras"] = keras_model.predict(given["images"])  # default verbosity: shows its progress bar
np.savez(outputs, **results)

imported = sorted(name for name in sys.modules if name.split(".")[0] == "pipeline")
assert not imported, f"loading the model imported {imported}"
print(f"steps_per_execution {keras_model.steps_per_execution}")
