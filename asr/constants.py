"""Constants shared by every module: the audio rate and the CTC vocabulary's special tokens."""

SAMPLE_RATE = 16_000  # Hz; every wav2vec2 checkpoint is pre-trained on 16 kHz audio

PAD = "[PAD]"  # id 0, doubles as the CTC blank (the model's pad_token_id)
UNK = "[UNK]"  # id 1, characters the vocabulary cannot represent
WORD_DELIMITER = "|"  # id 2, stands for the space between words in CTC labels
