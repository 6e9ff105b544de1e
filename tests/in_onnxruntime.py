"""`python in_onnxruntime.py MODEL INPUTS.npy LOGITS.npy`: the model's logits on the inputs, in whichever onnxruntime
the interpreter running this has (an older release in a venv of its own), on one thread."""
import sys

import numpy as np
import onnxruntime

model, inputs, logits = sys.argv[1:4]
options = onnxruntime.SessionOptions()
options.intra_op_num_threads = 1
session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
images = np.load(inputs)
fixed = session.get_inputs()[0].shape[0]
size = fixed if isinstance(fixed, int) else len(images)
padded = np.concatenate([images, np.zeros((-len(images) % size, *images.shape[1:]), images.dtype)])  # a fixed batch
outputs = [session.run(None, {session.get_inputs()[0].name: padded[i:i + size]})[0] for i in range(0, len(padded), size)]
np.save(logits, np.concatenate(outputs)[:len(images)])
print(onnxruntime.__version__)
