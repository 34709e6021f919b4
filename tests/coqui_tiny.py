"""A tiny, randomly initialised coqui VITS model saved the way coqui's trainer saves one, for loading tests.

Coqui's released voices download from the network, so the tests build their own: 218 k parameters, 0.9 MB on
disk, built in 1.2 s once coqui is imported (measured once). It speaks noise, but through coqui's real loading code
(`TTS.api.TTS(model_path=..., config_path=...)`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

SAMPLE_RATE = 16000  # not coqui's default 22050, so a test can tell the rate comes from the config
HOP_LENGTH = 256  # samples per decoder frame: the product of the upsample rates below


def build_tiny_model(directory: str | Path, speakers: Sequence[str] = (), languages: Sequence[str] = ()
                     ) -> tuple[str, str]:
    """Write `model.pth` and `config.json` into `directory`; return their paths (model, config).

    With `speakers`, the model is multi-speaker (a speaker embedding per name, listed in the config); with
    `languages`, multilingual (a language embedding per name).
    """
    import torch
    from trainer.io import save_model
    from TTS.config.shared_configs import BaseAudioConfig
    from TTS.tts.configs.vits_config import VitsArgs, VitsConfig
    from TTS.tts.models.vits import Vits

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    args = VitsArgs(
        hidden_channels=8,
        hidden_channels_ffn_text_encoder=16,
        num_heads_text_encoder=2,
        num_layers_text_encoder=1,
        num_layers_posterior_encoder=1,
        num_layers_flow=1,
        kernel_size_flow=3,
        resblock_type_decoder="2",
        resblock_kernel_sizes_decoder=[3],
        resblock_dilation_sizes_decoder=[[1, 3]],
        upsample_rates_decoder=[8, 8, 2, 2],
        upsample_initial_channel_decoder=16,
        upsample_kernel_sizes_decoder=[16, 16, 4, 4],
        use_sdp=False,
        init_discriminator=False,
        spec_segment_size=8,
        use_speaker_embedding=bool(speakers),
        speaker_embedding_channels=8,
        length_scale=3.0,  # slower than any real voice: a test tells its lines from piper's or espeak's by length
        use_language_embedding=bool(languages),
        embedded_language_dim=4,
    )
    audio = BaseAudioConfig(
        sample_rate=SAMPLE_RATE,
        fft_size=512,
        win_length=512,
        hop_length=HOP_LENGTH,
        num_mels=20,
        do_trim_silence=False,
    )
    config = VitsConfig(
        model_args=args,
        audio=audio,
        use_phonemes=False,
        text_cleaner="basic_cleaners",
        add_blank=True,
        use_speaker_embedding=bool(speakers),
        speakers=list(speakers) or None,
        languages=list(languages),
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = Vits(config)
        with torch.no_grad():  # random weights whisper at about -60 dBFS: make the noise loud enough to measure
            model.waveform_decoder.conv_post.weight.mul_(100.0)
    model_path, config_path = out / "model.pth", out / "config.json"
    save_model(model.config, model, model_path, current_step=0, epoch=0)
    model.config.save_json(str(config_path))
    return str(model_path), str(config_path)
