"""The transformer and its files: config, the model itself, checkpoint reading and writing (float and quantized
folders), the model folders and their download, and the text tokenizer with the special ids.

Floor 3: may import memory/ and image/ (and the shared errors and layout), never decoding/, parallel/ or
request.
"""
