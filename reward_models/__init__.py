"""Reward models behind one contract: ``make_reward(name, **options)(images, prompts) -> [B] float32``."""

from reward_models.registry import RewardSpec, available, make_reward, register, spec, validate_inputs

__all__ = ["RewardSpec", "available", "make_reward", "register", "spec", "validate_inputs"]
